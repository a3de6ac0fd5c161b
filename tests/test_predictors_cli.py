"""`latbench fit-predictor` on small real stores: imported tables and a local collection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_DATA
from latbench.ops import OpSpec

pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")
pytest.importorskip("matplotlib", reason="the fit report draws a PNG: pip install matplotlib")

import predictors  # noqa: E402

BLOCKS = SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv"
NETWORKS = SHARED_DATA / "fbnet-help" / "networks.csv"
FILES = {"manifest.json", "lut.json", "gbdt.json", "gbdt_pooled_0.txt", "correction.json",
         "report.json", "predicted_vs_measured.png"}


@pytest.fixture
def imported(latbench_home, latbench_cli):
    if not BLOCKS.exists():
        pytest.skip(f"shared data missing: {BLOCKS}")
    done = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4",
                        "--source", "pi-tables")
    assert done.returncode == 0, done.stderr
    return latbench_home


def test_fit_without_networks_saves_a_loadable_plain_sum_predictor(imported, latbench_cli):
    done = latbench_cli("fit-predictor", "--device", "pi", "--space", "fbnet-imagenet", "--no-select",
                        "--folds", "3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ops"] == 225 and report["networks"] == 0 and report["network_correction"] is False
    assert report["networks_cv"] is None
    ops = report["ops_cv"]
    assert ops["folds"] == 3 and ops["rows"] == 225
    for name in ("predictor", "flops_linear", "lightgbm_raw"):
        assert {"acc_5", "acc_10", "acc_15", "rmse_ms", "mape", "spearman", "kendall"} <= set(ops[name])
    assert ops["predictor"]["acc_10"] > ops["flops_linear"]["acc_10"]
    assert report["coverage"]["fraction"] == 1.0
    assert "no measured networks" in done.stderr and "plain sum" in done.stderr
    words = " ".join(done.stderr.split())  # rich wraps long notes
    assert "latbench import ... --device pi --source pi-tables" in words  # no collect: no profile
    folder = imported / "predictors" / "pi"
    assert {p.name for p in folder.iterdir()} == FILES
    assert (folder / "predicted_vs_measured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "report.json").read_text())["ops_cv"] == ops
    model = predictors.load("latbench:pi")
    assert not model.has_network_correction and model.unit == "ms"
    from latbench.importers import read_hwnasbench

    rows = read_hwnasbench(BLOCKS, "raspi4").rows
    specs = [OpSpec.from_key(r["key"]) for r in rows]
    np.testing.assert_array_equal(model.predict_ops(specs), [r["median_ms"] for r in rows])
    assert model.info_["runtime_version"] == "pi-tables" and model.info_["device"] == "pi"
    assert model.info_["units"] == {}  # farm units only; a plain collection has none


def test_fit_with_networks_reports_held_out_networks_and_baselines(imported, latbench_cli):
    done = latbench_cli("import", str(NETWORKS), "--device", "pi", "--column", "raspi4",
                        "--source", "pi-tables")
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--folds", "2", timeout_s=300)
    assert done.returncode == 0, done.stderr
    for text in ("ops: 2-fold held-out", "settings chosen inside each fold", "gbdt (nested)", "networks: held-out", "lut+gbdt+correction (", "flops_linear",
                 "lut_sum (no correction)", "settings tried", "network correction"):
        assert text in done.stdout + done.stderr, text
    assert "the sum of their ops" not in done.stderr and "measured networks:" not in done.stderr
    report = json.loads((imported / "predictors" / "pi" / "report.json").read_text())
    nets = report["networks_cv"]
    assert report["network_correction"] is True and nets["networks"] == nets["held_out"] == 5000
    # The HELP raspi4 column is the table sum, identity skips included (raspi4 timed them
    # alone: a copy); a network has no identity node, so the composed sum leaves them out and
    # the correction is within a fraction of a percent of none.
    assert nets["predictor"]["acc_5"] == 1.0 and nets["predictor"]["mape"] < 1e-3
    assert nets["flops_linear"]["mape"] > 0.01
    from predictors.selection import SEARCH

    assert len(report["selection"]) == 1 + sum(len(values) - 1 for _, values in SEARCH)  # all tried
    assert any("level_snap" in t["settings"] for t in report["selection"])
    model = predictors.load("latbench:pi")
    assert model.has_network_correction and abs(model.correction_.scale_ - 1) < 0.005


def test_few_networks_or_networks_far_from_their_op_sums_get_a_note(imported, latbench_cli, tmp_path):
    small = tmp_path / "three.csv"
    small.write_text("".join(NETWORKS.read_text().splitlines(keepends=True)[:4]))  # header + 3 archs
    # HELP's archs are of fbnet-cifar; stored as fbnet-imagenet they are 5x faster than their ops
    done = latbench_cli("import", str(small), "--device", "pi", "--column", "raspi4",
                        "--space", "fbnet-imagenet", "--source", "pi-tables")
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--no-select", "--folds", "2", "--space", "fbnet-imagenet")
    assert done.returncode == 0, done.stderr
    assert "only 3 measured networks" in done.stderr
    assert "take 0.2" in done.stderr and "same space and input size" in done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--no-select", "--folds", "2", "--json")
    assert done.returncode == 0, done.stderr  # --space fbnet-cifar: those three are of another space
    assert "left out 3 measured networks of fbnet-imagenet" in " ".join(done.stderr.split())
    assert json.loads(done.stdout)["networks"] == 0


def test_a_network_measured_at_0_ms_is_left_out_and_named_not_an_internal_error(imported, latbench_cli,
                                                                                 tmp_path):
    """An import takes 0 ms; the correction's fit then raised ValueError (an internal error)."""
    lines = NETWORKS.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:9]]
    nets = tmp_path / "nets.csv"
    nets.write_text("space,arch,median_ms\n" + "".join(
        f"fbnet-cifar,{r['arch']},{0 if i == 0 else r['raspi4']}\n" for i, r in enumerate(rows)))
    done = latbench_cli("import", str(nets), "--device", "pi", "--source", "pi-tables")
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--no-select", "--folds", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr
    assert "measured at 0 ms" in done.stderr and "left out of the network correction" in done.stderr
    report = json.loads(done.stdout)
    assert report["networks"] == 7 and report["network_correction"] is True
    assert any("measured at 0 ms" in why for why in report["skipped"].values())


def test_fit_predictor_errors(latbench_home, latbench_cli, imported):
    done = latbench_cli("fit-predictor", "--device", "phone")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no device profile named 'phone'" in done.stderr and "measured devices: pi" in done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--folds", "1")
    assert done.returncode == 2
    done = latbench_cli("fit-predictor", "--device", "pi", "--folds", "500")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--folds 500 is more than the 225 ops" in done.stderr and "--folds 225 or fewer" in done.stderr


def test_tables_are_listed_and_an_older_one_is_fitted_with_table(imported, latbench_cli):
    done = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "edgegpu",
                        "--alongside")
    assert done.returncode == 0, done.stderr
    listed = latbench_cli("lut", "--device", "pi", "--tables", "--json")
    assert listed.returncode == 0, listed.stderr
    tables = json.loads(listed.stdout)
    assert [t["runtime"] for t in tables] == ["imported (hwnasbench-edgegpu)", "imported (pi-tables)"]
    assert [(t["ops"], t["networks"], t["measurements"]) for t in tables] == [(225, 0, 225)] * 2
    newest, older = tables[0]["table"], tables[1]["table"]
    assert newest != older and len(older) == 8
    text = latbench_cli("lut", "--device", "pi", "--tables")
    assert newest in text.stdout and older in text.stdout and "hwnasbench-edgegpu" in text.stdout

    fit = latbench_cli("fit-predictor", "--device", "pi", "--no-select", "--folds", "2", "--json")
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout)["table"] == newest
    assert "is the newest of the 2 tables" in " ".join(fit.stderr.split())
    fit = latbench_cli("fit-predictor", "--device", "pi", "--no-select", "--folds", "2", "--json",
                       "--table", older[:4])
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout)["table"] == older and "newest of" not in fit.stderr
    model = predictors.load("latbench:pi")
    assert model.info_["table"] == older and model.info_["runtime_version"] == "pi-tables"
    lut = latbench_cli("lut", "--device", "pi", "--table", older, "--json")
    rows = {r["key"]: r["median_ms"] for r in json.loads(lut.stdout)["rows"]}
    specs = [OpSpec.from_key(k) for k in rows]
    np.testing.assert_array_equal(model.predict_ops(specs), list(rows.values()))  # raspi4's, not edgegpu's

    bad = latbench_cli("fit-predictor", "--device", "pi", "--table", "zz")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--table 'zz' names no table of device 'pi'" in bad.stderr and older in bad.stderr
    bad = latbench_cli("lut", "--device", "pi", "--tables", "--table", older)
    assert bad.returncode == 2 and "takes no --table" in bad.stderr


def test_keys_with_fewer_rounds_are_noted_and_show_no_spread(latbench_home, latbench_cli, tmp_path):
    from latbench.spaces import get_space

    ops = get_space("fbnet-cifar").ops()[:6]
    lines = ["key,median_ms,round"] + [f"{op.key},{1 + i / 10 + r / 100},{r}" for i, op in enumerate(ops)
                                       for r in range(2 if i else 1)]
    (tmp_path / "rounds.csv").write_text("\n".join(lines) + "\n")
    assert latbench_cli("import", str(tmp_path / "rounds.csv"), "--device", "dev").returncode == 0
    fit = latbench_cli("fit-predictor", "--device", "dev", "--no-select", "--folds", "2")
    assert fit.returncode == 2 and fit.stderr.count("\n") == 1, fit.stderr  # 3 ops per fit: too few
    assert "--folds 2 fits each fold on 3 of the 6 ops" in fit.stderr and "give --folds 6 or more" in fit.stderr
    fit = latbench_cli("fit-predictor", "--device", "dev", "--no-select", "--folds", "6")
    assert fit.returncode == 0, fit.stderr
    assert "1 of 6 ops have fewer rounds (1) than the most measured (2)" in fit.stderr
    rows = json.loads(latbench_cli("lut", "--device", "dev", "--json").stdout)["rows"]
    assert [r["round_spread"] is None for r in rows if r["key"] == ops[0].key] == [True]
    assert all(r["round_spread"] > 0 for r in rows if r["key"] != ops[0].key)


def test_identity_skips_do_not_count_towards_the_ops_a_fit_needs(latbench_home, latbench_cli, tmp_path):
    """The GBDT is not fitted on identities: 5 ops and 3 identities are too few, in one line."""
    from latbench.spaces import get_space

    ops = get_space("fbnet-cifar").ops()
    chosen = [op for op in ops if not op.is_identity][:5] + [op for op in ops if op.is_identity][:3]
    lines = ["key,median_ms"] + [f"{op.key},{0.01 if op.is_identity else 1 + i / 10}" for i, op in enumerate(chosen)]
    (tmp_path / "few.csv").write_text("\n".join(lines) + "\n")
    assert latbench_cli("import", str(tmp_path / "few.csv"), "--device", "few").returncode == 0
    fit = latbench_cli("fit-predictor", "--device", "few")
    assert fit.returncode == 1 and fit.stderr.count("\n") == 1, fit.stderr
    assert "only 8 ops measured" in fit.stderr and "3 of them identity skips, which are not fitted" in fit.stderr


def test_low_coverage_of_an_imported_device_says_to_import_not_to_collect(latbench_home, latbench_cli,
                                                                           tmp_path):
    from latbench.spaces import get_space

    ops = get_space("fbnet-cifar").ops()[:12]
    (tmp_path / "few.csv").write_text("key,median_ms\n" + "".join(f"{op.key},{1 + i / 10}\n"
                                                                  for i, op in enumerate(ops)))
    assert latbench_cli("import", str(tmp_path / "few.csv"), "--device", "board").returncode == 0
    fit = latbench_cli("fit-predictor", "--device", "board", "--no-select")
    assert fit.returncode == 0, fit.stderr
    assert "of fbnet-cifar's ops are measured" in fit.stderr
    assert "latbench import ... --device board --source csv-few" in fit.stderr
    assert "latbench collect" not in fit.stderr  # an imported device has no profile to collect with


def test_fit_predictor_without_a_database(latbench_cli):
    done = latbench_cli("fit-predictor", "--device", "local")
    assert done.returncode == 1 and "no measurements yet" in done.stderr


@pytest.mark.slow
def test_fit_on_a_local_collection(warm_home, fast_profile, latbench_cli):
    """Ops and two networks measured here with ONNX Runtime, then fitted and loaded."""
    from conftest import CACHED_NETWORKS, CACHED_OPS

    done = latbench_cli("collect", "--device", fast_profile, "--limit", str(CACHED_OPS),
                        "--networks", str(CACHED_NETWORKS), timeout_s=600)
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", fast_profile, "--no-select", "--folds", "4", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ops"] == CACHED_OPS and report["networks"] == CACHED_NETWORKS
    assert report["network_correction"] is True and report["networks_cv"]["held_out"] == CACHED_NETWORKS
    assert report["runtime"] == "onnxruntime"
    model = predictors.load(f"latbench:{fast_profile}")
    from latbench.spaces import get_space

    space = get_space("fbnet-cifar")
    arch = [0] * space.num_layers
    table = model.cost_table(space)
    total = table[np.arange(space.num_layers), arch].sum() + model.fixed_cost(space)
    assert model.predict_network(space, arch) == pytest.approx(float(model.correct(total)))
    assert report["coverage"]["measured"] == CACHED_OPS


def test_farm_units_are_pooled_by_default_and_fit_alone_with_unit(latbench_home, latbench_cli):
    """Two units of one device, each measuring one round of every op (as `collect --farm`
    splits the work); unit b is twice as slow as unit a."""
    if not BLOCKS.exists():
        pytest.skip(f"shared data missing: {BLOCKS}")
    from latbench.importers import read_hwnasbench
    from latbench.measurement import Measurement
    from latbench.store import Store

    table = {r["key"]: r["median_ms"] for r in read_hwnasbench(BLOCKS, "raspi4").rows}
    with Store(latbench_home / "latbench.db") as store:
        ctx = store.context("pi", "litert", "2.1", {"threads": 1})
        for rnd, (unit, scale) in enumerate((("pi@a", 1.0), ("pi@b", 2.0))):
            results = [(key, rnd, "op", Measurement(key, [scale * ms] * 5), {}) for key, ms in table.items()]
            store.save_batch(ctx, results=results, status="ok", items=len(results), started_at=0.0, unit=unit)
    specs = [OpSpec.from_key(k) for k in table]
    expected = np.array(list(table.values()))

    for args, name, scale in ((["--unit", "pi@a"], "pi@a", 1.0), (["--unit", "pi@b"], "pi@b", 2.0),
                              ([], "pi", 1.5)):
        done = latbench_cli("fit-predictor", "--device", "pi", "--space", "fbnet-imagenet", "--no-select",
                            "--folds", "2", *args)
        assert done.returncode == 0, done.stderr
        model = predictors.load(f"latbench:{name}")
        # The LUT holds the median over the rounds used: one unit's own, or both pooled.
        np.testing.assert_allclose(model.predict_ops(specs), scale * expected, rtol=1e-9)
        assert model.info_["unit"] == (args[1] if args else None)
    assert "pooled 2 units: pi@a (225 measurements), pi@b (225 measurements)" in done.stderr
    one = json.loads(latbench_cli("lut", "--device", "pi", "--unit", "pi@b", "--json").stdout)
    assert one["unit"] == "pi@b" and sorted(r["median_ms"] for r in one["rows"]) == sorted(2.0 * expected)
    assert model.info_["units"] == {"pi@a": 225, "pi@b": 225}

    done = latbench_cli("fit-predictor", "--device", "pi", "--unit", "pi@c")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "use one of: pi@a, pi@b" in done.stderr
    with pytest.raises(Exception, match="--device pi --unit pi@c"):
        predictors.load("latbench:pi@c")


def test_the_ops_table_says_which_rows_its_relative_metrics_leave_out(latbench_home, latbench_cli):
    """HW-NAS-Bench's Jetson table has 12 identity skips at 0 ms: the +-% columns and mape are
    over the other 213 ops (a relative error of 0 ms is undefined), while n read 225."""
    if not BLOCKS.exists():
        pytest.skip(f"shared data missing: {BLOCKS}")
    done = latbench_cli("import", str(BLOCKS), "--device", "tx2", "--source-device", "edgegpu")
    assert done.returncode == 0, done.stderr
    fit = latbench_cli("fit-predictor", "--device", "tx2", "--no-select", "--folds", "2")
    assert fit.returncode == 0, fit.stderr
    words = " ".join(fit.stdout.split())
    assert "225 ops; the 12 measured at 0 ms are left out of +-% and mape" in words, fit.stdout
    pi = latbench_cli("import", str(BLOCKS), "--device", "pi4", "--source-device", "raspi4")
    assert pi.returncode == 0, pi.stderr
    fit = latbench_cli("fit-predictor", "--device", "pi4", "--no-select", "--folds", "2")
    assert fit.returncode == 0 and "0 ms" not in fit.stdout, fit.stdout  # none at 0 ms: no words


def test_the_networks_hint_of_a_hwnasbench_cpu_warns_off_helps_summed_column():
    """HELP's raspi4 column is the sum of HW-NAS-Bench's blocks: the hint to import measured
    networks pointed a raspi4 user at it."""
    from latbench.cli.fit_predictor import _summed_caveat

    assert "not HELP's raspi4 column, which is the sum of this block table" in _summed_caveat("hwnasbench-raspi4")
    assert _summed_caveat("hwnasbench-edgegpu") == "" and _summed_caveat("pi-tables") == ""
