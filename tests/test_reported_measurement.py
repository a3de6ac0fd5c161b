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
    with pytest.raises(ValueError, match="needs count >= 1 and a finite mean; got .* for k$"):
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


def test_a_mean_printed_as_nan_is_refused():
    with pytest.raises(ValueError, match="finite mean"):
        ReportedMeasurement.from_summary("k", {"count": 5, "mean_ms": float("nan"), "std_ms": 0.1})


def test_other_figures_printed_as_nan_or_inf_count_as_not_printed():
    """C++ tools print "nan" and "inf" (a std of one run, a max that overflowed): such a figure
    must not make the median or a percentile NaN, which the store cannot keep."""
    nan, inf = float("nan"), float("inf")
    m = ReportedMeasurement.from_summary("k", {
        "count": 10, "mean_ms": 1.0, "std_ms": nan, "median_ms": nan, "min_ms": 0.9, "max_ms": inf,
        "percentiles_ms": {"90": nan, "95": 1.4}})
    stats = m.summary()
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert m.median_ms == 1.0 and "median_ms" in m.estimated  # the mean, as with no median
    assert m.std_ms == 0.0
    assert 0.9 <= m.p10_ms <= m.median_ms <= m.p90_ms <= 1.4


def test_collector_records_nan_results_as_failures_and_stores_the_rest(latbench_home):
    """A NaN median broke the store's NOT NULL and INSERT OR IGNORE dropped the row without a
    word: the result was neither stored nor reported as failed."""
    profile = load_profile("local")
    ops = get_space("fbnet-cifar").ops()[:3]
    nan = float("nan")
    with Store(latbench_home / "latbench.db") as store, Collector(profile, store) as col:
        plan = col.plan(ops)
        from latbench.collect import Report

        report = Report()
        output = BatchOutput(start={"runtime": "litert"}, end={"state": {}}, results={
            "0": {"ok": True, "summary": {"count": 40, "mean_ms": 3.0, "std_ms": 0.2}},
            "1": {"ok": True, "summary": {"count": 40, "mean_ms": nan, "std_ms": nan}},
            "2": {"ok": True, "samples_ms": [1.0, nan, 2.0]},
        })
        ids = {"0": (ops[0].key, 0), "1": (ops[1].key, 0), "2": (ops[2].key, 0)}
        col.store_output(plan, ids, output, 0.0, None, report)
        rows = store.rows(plan.context)
    assert [r.key for r in rows] == [ops[0].key] and report.measured == 1
    assert "finite mean" in report.failed[ops[1].key]
    assert "finite samples" in report.failed[ops[2].key]
