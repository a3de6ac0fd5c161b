"""Tools that print statistics instead of runs (benchmark_model) still give stored, honest rows."""

import json
import math
import sqlite3

import pytest

from latbench.collect import Collector
from latbench.measurement import ReportedMeasurement
from latbench.profiles import load_profile
from latbench.runners.base import BatchOutput
from latbench.spaces import get_space
from latbench.store import Store


def test_printed_percentiles_are_used_as_they_are():
    m = ReportedMeasurement.from_summary("k", {
        "count": 50, "mean_ms": 2.0, "std_ms": 0.1, "min_ms": 1.8, "max_ms": 2.6,
        "percentiles_ms": {"5": 1.85, "50": 1.97, "95": 2.3}})
    assert m.median_ms == 1.97
    # p10 lies between the printed p5 and p50: interpolated, and said so
    assert m.p10_ms == pytest.approx(1.85 + (1.97 - 1.85) * 5 / 45)
    assert "p10_ms" in m.estimated and "median_ms" not in m.estimated


def test_mean_and_std_only_are_estimated_and_clipped():
    m = ReportedMeasurement.from_summary("k", {"count": 10, "mean_ms": 1.0, "std_ms": 0.5,
                                               "min_ms": 0.8, "max_ms": 3.0,
                                               "std_kind": "population"})
    assert m.median_ms == 1.0 and "median_ms" in m.estimated
    assert m.std_ms == pytest.approx(0.5 * math.sqrt(10 / 9))  # sample std like Measurement
    assert m.p10_ms == 0.8  # mean - 1.28 std is below the printed minimum
    assert m.p90_ms == pytest.approx(1.0 + 1.2816 * m.std_ms)


@pytest.mark.parametrize("summary", [{}, {"count": 0, "mean_ms": 1.0}, {"count": 3}])
def test_unusable_summary_is_refused(summary):
    with pytest.raises(ValueError):
        ReportedMeasurement.from_summary("k", summary)


def test_collector_stores_a_summary_result_and_names_estimates(latbench_home):
    profile = load_profile("local")
    op = get_space("fbnet-cifar").ops()[0]
    with Store(latbench_home / "latbench.db") as store, Collector(profile, store) as col:
        plan = col.plan([op])
        from latbench.collect import Report

        report = Report()
        output = BatchOutput(start={"runtime": "litert"}, end={"state": {}}, results={
            "0": {"ok": True, "summary": {"count": 40, "mean_ms": 3.0, "std_ms": 0.2}},
            "1": {"ok": True, "summary": {"count": 0}},
        })
        left = col.store_output(plan, {"0": (op.key, 0), "1": (op.key, 1)}, output, 0.0, None, report)
        rows = store.rows(plan.context)
    assert left == [] and report.measured == 1 and "unreadable result" in report.failed[op.key]
    assert [(r.round, r.median_ms, r.count) for r in rows] == [(0, 3.0, 40)]
    con = sqlite3.connect(latbench_home / "latbench.db")
    runner = json.loads(con.execute("SELECT runner FROM batches").fetchone()[0])
    assert runner["estimated_stats"][op.key] == ["median_ms", "p10_ms", "p90_ms", "q1_ms", "q3_ms"]
