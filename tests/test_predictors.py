"""Predictors on real measured data: features, metrics, estimators, LUT, composition, load."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA
from latbench.errors import UsageError
from latbench.ops import FEATURE_NAMES, OpSpec
from latbench.spaces import get_space

pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")
pytest.importorskip("scipy", reason="predictors need SciPy: pip install -e . (a latbench dependency)")

import predictors  # noqa: E402
from predictors import metrics, selection  # noqa: E402
from predictors.correction import NetworkCorrection  # noqa: E402
from predictors.features import (FEATURE_SETS, feature_matrix, spec_matrix,  # noqa: E402
                                 specs_from_matrix)
from predictors.gbdt import GBDTPredictor  # noqa: E402
from predictors.latency import LatencyPredictor  # noqa: E402
from predictors.lut import LUT  # noqa: E402
from predictors.physics import LogLinearBase, PowerLawBase  # noqa: E402

BLOCKS_CSV = SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv"


def device_table(device: str) -> tuple[list[OpSpec], np.ndarray]:
    from latbench.importers import read_hwnasbench

    if not BLOCKS_CSV.exists():
        pytest.skip(f"shared data missing: {BLOCKS_CSV}")
    rows = read_hwnasbench(BLOCKS_CSV, device).rows
    return [OpSpec.from_key(r["key"]) for r in rows], np.array([r["median_ms"] for r in rows])


def block_halves(device: str, seed: int = 0):
    specs, y = device_table(device)
    idx = [i for i, s in enumerate(specs) if s.kind == "fbnet_block"]
    order = np.random.default_rng(seed).permutation(idx)
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    return ([specs[i] for i in train], y[train], [specs[i] for i in test], y[test])


# ---- features -------------------------------------------------------------------------------

def test_vectorised_features_equal_opspec_features():
    specs = get_space("fbnet-cifar").ops() + get_space("fbnet-imagenet").ops() + [
        OpSpec("conv_bn_relu", 32, 14, 9, 64, kernel=3, stride=2, groups=4, dtype="float16"),
        OpSpec("conv_bn_relu", 8, 7, 7, 8, kernel=5, activation="none", dtype="int8")]
    got = feature_matrix(specs, "opspec")
    want = np.array([[s.features()[n] for n in FEATURE_NAMES] for s in specs])
    assert FEATURE_SETS["opspec"][1:] == FEATURE_NAMES
    np.testing.assert_allclose(got[:, 1:], want, rtol=1e-12)
    derived = feature_matrix(specs, "derived")
    assert derived.shape == (len(specs), len(FEATURE_SETS["derived"]))
    assert np.all(np.isfinite(derived))
    # the sub-ops of a block add up to its MACs
    names = FEATURE_SETS["derived"]
    parts = sum(derived[:, names.index(f"macs_{r}")] for r in ("expand", "depthwise", "pointwise", "full"))
    blocks = np.array([s.kind == "fbnet_block" for s in specs])
    np.testing.assert_array_equal(parts[blocks], derived[blocks, names.index("macs")])


def test_spec_matrix_round_trip_and_bad_shapes():
    specs = get_space("fbnet-cifar").ops()
    assert specs_from_matrix(spec_matrix(specs)) == specs
    with pytest.raises(ValueError, match="11 columns"):
        feature_matrix(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unknown feature set"):
        feature_matrix(specs, "everything")
    with pytest.raises(TypeError, match="OpSpec"):
        feature_matrix(["fbnet_block"])


# ---- metrics --------------------------------------------------------------------------------

def test_metrics_on_known_values():
    true = [1.0, 1.0, 1.0, 1.0, 0.0]
    pred = [1.0, 1.06, 1.12, 0.8, 0.3]
    m = metrics.evaluate(pred, true)
    assert m["n"] == 5 and m["n_zero_true"] == 1
    assert m["acc_5"] == pytest.approx(1 / 4)
    assert m["acc_10"] == pytest.approx(2 / 4)
    assert m["acc_15"] == pytest.approx(3 / 4)
    assert m["mape"] == pytest.approx((0.06 + 0.12 + 0.2) / 4)
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0.06 ** 2 + 0.12 ** 2 + 0.2 ** 2 + 0.3 ** 2) / 5))
    # one adjacent swap of 4 ranks: rho = 1 - 6 * 2 / (4 * 15), tau = (5 - 1) / 6
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert metrics.kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert metrics.accuracy_within([1.1], [1.0], 0.10) == 1.0  # the band edge counts
    with pytest.raises(ValueError, match="differ in length"):
        metrics.evaluate([1, 2], [1])


# ---- estimators -----------------------------------------------------------------------------

def test_estimator_settings_are_checked_in_fit():
    specs, y, _, _ = block_halves("raspi4")
    est = GBDTPredictor(num_leaves=1)  # __init__ only stores
    assert est.get_params()["num_leaves"] == 1
    with pytest.raises(ValueError, match=r"^The 'num_leaves' parameter of GBDTPredictor must be an "
                                         r"int >= 2\. Got 1\.$"):
        est.fit(specs, y)
    with pytest.raises(ValueError, match="'base' parameter of GBDTPredictor must be one of"):
        GBDTPredictor(base="magic").fit(specs, y)
    with pytest.raises(TypeError):
        GBDTPredictor("derived", "log")  # everything after the first is keyword-only
    with pytest.raises(ValueError, match="has no setting 'leaves'"):
        GBDTPredictor().set_params(leaves=3)
    assert repr(GBDTPredictor(num_leaves=4)) == "GBDTPredictor(num_leaves=4)"
    with pytest.raises(ValueError, match="needs at least 5"):
        GBDTPredictor().fit(specs[:3], y[:3])
    with pytest.raises(ValueError, match="y has"):
        GBDTPredictor().fit(specs, y[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        GBDTPredictor().fit(specs, -y)


def test_estimators_work_with_scikit_learn_model_selection():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone, is_regressor
    from sklearn.model_selection import GridSearchCV, cross_val_score

    specs, y = device_table("raspi4")
    X = spec_matrix(specs)
    est = LatencyPredictor(GBDTPredictor(n_estimators=10))
    assert is_regressor(est) and is_regressor(GBDTPredictor())
    assert est.get_params()["gbdt__n_estimators"] == 10  # deep, as scikit-learn's are
    assert "gbdt__n_estimators" not in est.get_params(deep=False)
    est.set_params(gbdt__n_estimators=12)
    assert est.gbdt.n_estimators == 12 and repr(est) == "LatencyPredictor(gbdt=GBDTPredictor(n_estimators=12))"
    copy = clone(est)
    assert copy.gbdt is not est.gbdt and copy.gbdt.n_estimators == 12
    scores = cross_val_score(GBDTPredictor(n_estimators=10), X, y, cv=3)  # default scorer: score, R^2
    assert scores.shape == (3,) and np.all(scores > 0.5)
    search = GridSearchCV(est, {"gbdt__n_estimators": [5, 20]}, cv=3,
                          scoring="neg_mean_absolute_percentage_error").fit(X, y)
    assert search.best_params_["gbdt__n_estimators"] in (5, 20)
    with pytest.raises(ValueError, match="gbdt is None, not an estimator"):
        LatencyPredictor().set_params(gbdt__n_estimators=3)
    assert sklearn.__version__  # imported only by scikit-learn's own calls


_FC = OpSpec("fc", 8, 1, 1, 4, activation="none")


@pytest.mark.parametrize("call", [
    lambda: GBDTPredictor().predict([_FC]),
    lambda: PowerLawBase().predict([_FC]),
    lambda: LogLinearBase().predict([_FC]),
    lambda: LatencyPredictor().predict_ops([_FC]),
    lambda: NetworkCorrection().predict(1.0),
], ids=["gbdt", "power", "loglinear", "latency", "correction"])
def test_predict_before_fit_says_call_fit_first(call):
    with pytest.raises(predictors.NotFittedError, match="not fitted yet; call fit first"):
        call()


def test_gbdt_beats_both_baselines_on_held_out_raspi4_blocks():
    xs, ys, xt, yt = block_halves("raspi4")
    model = GBDTPredictor(base="blend")
    assert model.fit(xs, ys) is model
    assert model.n_features_in_ == len(FEATURE_SETS["derived"]) and model.boosters_
    pred = model.predict(xt)
    np.testing.assert_array_equal(pred, model.predict(spec_matrix(xt)))  # a spec matrix works too
    ours = metrics.evaluate(pred, yt)
    line = selection.FlopsLinear().fit(selection.op_flops(xs), ys)
    flops = metrics.evaluate(line.predict(selection.op_flops(xt)), yt)
    raw = metrics.evaluate(GBDTPredictor(**selection.RAW_BASELINE).fit(xs, ys).predict(xt), yt)
    assert ours["acc_10"] > flops["acc_10"] + 0.3
    assert ours["acc_10"] > raw["acc_10"] + 0.1
    assert ours["mape"] < min(flops["mape"], raw["mape"])
    assert ours["spearman"] > 0.95


def test_latency_levels_pull_a_prediction_towards_a_dense_level_by_reach_at_most():
    from predictors.levels import LatencyLevels

    measured = [0.54, 0.55, 0.55, 0.56, 0.80, 0.81, 0.80, 0.79, 2.0]
    levels = LatencyLevels(0.06).fit(np.array(measured))
    got = levels.apply(np.array([0.58, 0.60, 0.77, 1.95, 9.0]))
    assert got[0] == pytest.approx(0.55, rel=0.01)  # 5% over the 0.54-0.56 level: moved onto it
    assert 0.60 / 1.06 - 1e-3 < got[1] < 0.59  # 9% over it: towards it, by 6% at most
    assert got[2] == pytest.approx(0.80, rel=0.01)
    assert got[3] == 1.95  # one op at 2.0 ms is no level
    assert got[4] == 9.0  # far from every measured latency
    again = LatencyLevels.from_dict(levels.to_dict())
    np.testing.assert_array_equal(again.apply(np.array([0.58, 0.77])), got[[0, 2]])
    np.testing.assert_array_equal(LatencyLevels(0.0).fit(np.array(measured)).apply(np.array([0.58])), [0.58])
    with pytest.raises(ValueError, match="not a list of finite numbers"):
        LatencyLevels.from_dict({"reach": 0.06, "log_ms": [float("nan")]})


def test_cross_validation_snaps_onto_levels_on_the_jetson_gpu_and_not_on_the_pi_cpu():
    """HW-NAS-Bench's edgegpu (TensorRT on a TX2) blocks sit on launch-overhead levels."""
    xs, ys, xt, yt = block_halves("edgegpu")
    smooth = GBDTPredictor().fit(xs, ys)
    snapped = GBDTPredictor(level_snap=selection.LEVEL_SNAP).fit(xs, ys)
    assert (metrics.accuracy_within(snapped.predict(xt), yt, 0.10)
            > metrics.accuracy_within(smooth.predict(xt), yt, 0.10) + 0.03)
    meta, models = snapped.to_files()
    np.testing.assert_allclose(GBDTPredictor.from_files(meta, models).predict(xt), snapped.predict(xt),
                               rtol=1e-9)
    with pytest.raises(ValueError, match="does not list them"):
        GBDTPredictor.from_files({k: v for k, v in meta.items() if k != "levels"}, models)
    described = LatencyPredictor(GBDTPredictor(level_snap=0.06)).fit(xs, ys).describe()
    assert "pulled up to 6% towards latency levels" in described
    assert "levels" not in LatencyPredictor(GBDTPredictor()).fit(xs, ys).describe()
    assert selection.select_gbdt(xs, ys, seed=0)[0]["level_snap"] == selection.LEVEL_SNAP
    xs, ys, _, _ = block_halves("raspi4")
    assert selection.select_gbdt(xs, ys, seed=0)[0]["level_snap"] == 0.0


def test_identity_skips_are_answered_apart_and_do_not_bend_the_fit_of_other_ops():
    specs, y = device_table("raspi4")
    identity = np.array([s.is_identity for s in specs])
    assert identity.sum() >= 5 and (y[identity] > 0).all()  # raspi4 timed them: call overhead
    others = [s for s, i in zip(specs, identity) if not i]
    probe = others[::3] + [OpSpec("skip", 40, 9, 9, 40, kernel=1, activation="none")]
    with_them = GBDTPredictor().fit(specs, y)
    without = GBDTPredictor().fit(others, y[~identity])
    np.testing.assert_array_equal(with_them.predict(probe)[:-1], without.predict(probe)[:-1])
    assert with_them.predict(probe)[-1] == pytest.approx(np.median(y[identity]))
    assert without.predict(probe)[-1] == without.floor_ms  # none measured: no node, no time
    meta, models = with_them.to_files()
    assert GBDTPredictor.from_files(meta, models).predict(probe)[-1] == pytest.approx(np.median(y[identity]))
    meta.pop("identity_ms")  # a model saved before identities were set apart: its trees answer
    assert GBDTPredictor.from_files(meta, models).identity_ms_ is None
    with pytest.raises(ValueError, match="not identity skips"):
        GBDTPredictor().fit(specs[:3] + [s for s in specs if s.is_identity], np.r_[y[:3], y[identity]])


def test_model_split_per_kind_and_linear_target_fit_and_predict():
    specs, y = device_table("edgegpu")
    est = GBDTPredictor(split="per_kind", target="linear", min_kind_rows=100).fit(specs, y)
    assert set(est.boosters_) == {"*", "fbnet_block"}  # 192 blocks get their own model
    pred = est.predict(specs)
    assert np.all(pred >= 0) and metrics.accuracy_within(pred, y, 0.15) > 0.8  # fits what it saw


def test_power_law_base_recovers_a_known_power_law():
    space = get_space("fbnet-imagenet")
    ops = [op for op in space.ops() if op.kind == "skip" and not op.is_identity]
    ops += [OpSpec("skip", c, h, h, 2 * c, kernel=1, stride=s, activation="none")
            for c in (8, 24, 48, 96) for h in (7, 14, 28, 56) for s in (1, 2)]
    macs = np.array([op.macs for op in ops], dtype=float)
    y = 1e-5 * macs ** 0.8 + 0.02
    fitted = PowerLawBase(reg=1e-4).fit(ops, y)
    np.testing.assert_allclose(fitted.predict(ops), y, rtol=0.05)
    again = PowerLawBase.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(again.predict(ops), fitted.predict(ops))


def test_power_law_exponents_are_bounded_so_an_unseen_block_is_not_extrapolated_wildly():
    # On this half of edgegpu's blocks an unbounded fit traded MACs^-12 against output^8 and
    # put a 16x16 grouped block it never saw at 4.2 ms (measured 0.76 ms): 5.5x off.
    xs, ys, xt, yt = block_halves("edgegpu", seed=3)
    fitted = PowerLawBase().fit(xs, ys)
    width = 5  # per sub-op: log-coefficient, then the exponents of MACs, in, out, weight bytes
    exponents = np.concatenate([fitted.theta_[i * width + 1:(i + 1) * width] for i in range(5)])
    assert exponents.min() >= 0.0 and exponents.max() <= fitted.max_exponent
    worst = np.exp(np.max(np.abs(np.log(fitted.predict(xt) / yt))))
    assert worst < 3.0, f"a held-out block is {worst:.1f}x off"
    with pytest.raises(ValueError, match="'max_exponent' parameter of PowerLawBase"):
        PowerLawBase(max_exponent=0.0).fit(xs, ys)
    saved = fitted.to_dict()  # as saved before the bound existed: loads, predicts the same
    del saved["params"]["max_exponent"]
    np.testing.assert_array_equal(PowerLawBase.from_dict(saved).predict(xt), fitted.predict(xt))


def test_a_sub_op_kind_absent_from_the_fit_borrows_the_law_of_the_measured_ones():
    # Both avgpools held out: the "pool" law has no row. Its own parameters would sit where the
    # penalty leaves them, a flat 1 ms: 37x and 12x the measured 0.028 and 0.084 ms.
    specs, y = device_table("raspi4")
    held = np.array([s.kind == "avgpool" for s in specs])
    assert held.sum() == 2
    fitted = PowerLawBase().fit([s for s, h in zip(specs, held) if not h], y[~held])
    ratio = fitted.predict([s for s, h in zip(specs, held) if h]) / y[held]
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_select_gbdt_tries_each_setting_and_returns_the_best():
    xs, ys, _, _ = block_halves("eyeriss")
    best, tried = selection.select_gbdt(xs[:60], ys[:60], folds=3, seed=1)
    assert len(tried) == 1 + sum(len(v) - 1 for _, v in selection.SEARCH)
    [chosen] = [t for t in tried if t["chosen"]]
    assert all(chosen["settings"][k] == best[k] for k in selection.DEFAULT_CHOICE)
    # nothing tried beat the choice by the margin a change needs
    floor = chosen["metrics"]["log_error"] * (1 - selection.MIN_GAIN)
    assert all(t["metrics"]["log_error"] >= floor for t in tried)
    assert {t["settings"]["base"] for t in tried} == {"power", "blend", "loglinear", "none"}
    assert selection.log_error(np.array([2.0, 0.5]), np.array([1.0, 1.0])) == pytest.approx(np.log(2))


def test_nested_scoring_chooses_each_folds_settings_without_its_rows(monkeypatch):
    xs, ys, _, _ = block_halves("raspi4")
    xs, ys = xs[:40], ys[:40]
    real, seen = selection.select_gbdt, []

    def recording(specs, y, **kw):
        seen.append({tuple(r) for r in selection.as_spec_matrix(specs).tolist()})
        return real(specs, y, **kw)

    monkeypatch.setattr(selection, "select_gbdt", recording)
    done = selection.evaluate_ops(xs, ys, {}, folds=4, seed=3, nested_base={"random_state": 3})
    assert done["nested"] and len(done["fold_settings"]) == len(seen) == 4
    m = selection.as_spec_matrix(xs)
    fold_of = selection.kfold(len(ys), 4, 3)
    for fold, rows in enumerate(seen):  # each search saw exactly the other folds' ops
        assert rows == {tuple(r) for r in m[fold_of != fold].tolist()}
    plain = selection.evaluate_ops(xs, ys, {"random_state": 3}, folds=4, seed=3)
    assert not plain["nested"] and plain["fold_settings"] is None
    assert not np.array_equal(done["pred"], plain["pred"])


def test_a_search_is_nested_only_where_every_inner_fit_has_rows_enough():
    specs, _ = device_table("raspi4")
    blocks = [s for s in specs if s.kind == "fbnet_block"]
    identity = OpSpec("skip", 16, 32, 32, 16)
    # 9 ops, 5 folds: the worst inner fit has 9 - 2 (outer fold) - 2 (inner fold) = 5 rows
    assert selection.nests(blocks[:9], 5) and not selection.nests(blocks[:8], 5)
    assert not selection.nests(blocks[:8] + [identity], 5)  # 9 ops too, but an identity is not fitted
    assert selection.nests(blocks[:40], 5)


# ---- LUT, correction, composition ------------------------------------------------------------

def test_lut_rows_coverage_and_lookup():
    space = get_space("fbnet-cifar")
    ops = space.ops()
    rows = [{"key": op.key, "median_ms": 0.1 * (i + 1), "p10_ms": 0.09, "p90_ms": 0.2, "count": 30,
             "round_spread": 0.01, "rounds": 3} for i, op in enumerate(ops[:-10])]
    rows.append({"key": space.network([0] * 22).key, "median_ms": 5.0})
    lut = LUT.from_rows(rows)
    assert len(lut) == len(ops) - 10  # the network row is not an op
    cov = lut.coverage(space)
    assert (len(cov.measured), len(cov.missing), cov.total) == (len(ops) - 10, 10, len(ops))
    assert set(cov.missing) == {op.key for op in ops[-10:]}
    assert lut.get(ops[1]).median_ms == pytest.approx(0.2) and lut.get(ops[1]).count == 30
    values = lut.lookup([ops[0], ops[-1]])
    assert values[0] == pytest.approx(0.1) and np.isnan(values[1])
    assert LUT.from_dict(lut.to_dict()).entries == lut.entries
    with pytest.raises(ValueError, match="not an op key"):
        LUT.from_rows([{"key": "conv:3x3", "median_ms": 1.0}])


@pytest.mark.parametrize("median_ms", [float("nan"), float("inf"), -1.0])
def test_a_lut_of_rows_or_arrays_takes_only_finite_latencies_and_one_per_spec(median_ms):
    """from_dict checked this; from_rows did not: NaN was answered by the GBDT while
    predict_sources said lut, inf became the op's prediction, and save failed on either."""
    specs, y = device_table("raspi4")
    key = specs[0].key
    with pytest.raises(ValueError, match=f"the latency of {key} is not a finite number >= 0 ms"):
        LUT.from_rows([{"key": key, "median_ms": median_ms}])
    with pytest.raises(ValueError, match=f"the latency of {key} is not a finite number >= 0 ms"):
        LUT.from_arrays(specs[:2], [median_ms, 1.0])
    with pytest.raises(ValueError, match="3 specs but 2 latencies"):
        LUT.from_arrays(specs[:3], y[:2])


def test_network_correction_forms():
    x = np.linspace(5, 50, 12)
    affine = NetworkCorrection().fit(x, 0.9 * x - 0.3)
    assert affine.form_ == "affine"
    assert (affine.scale_, affine.offset_ms_) == (pytest.approx(0.9), pytest.approx(-0.3))
    assert NetworkCorrection().fit(x, x).form_ == "none"  # the simplest form that fits
    one = NetworkCorrection().fit(x[:1], 0.5 * x[:1])  # one network: no correction from it
    assert one.form_ == "none" and one.predict(2.0) == 2.0
    assert NetworkCorrection("scale").fit(x[:1], 0.5 * x[:1]).scale_ == pytest.approx(0.5)  # forced
    scale = NetworkCorrection().fit(x, 0.8 * x)
    assert scale.form_ == "scale" and scale.scale_ == pytest.approx(0.8)
    assert NetworkCorrection(form="affine").fit(x[:2], x[:2]).form_ == "scale"  # too few for affine
    with pytest.raises(ValueError, match="The 'form' parameter of NetworkCorrection"):
        NetworkCorrection(form="quadratic").fit(x, x)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_network_latency_that_is_not_a_number_is_a_clear_value_error(bad, capfd):
    """NaN passed the `<= 0` check: LAPACK printed "On entry to DLASCL ..." and raised LinAlgError."""
    x = np.linspace(5, 50, 12)
    y = 0.9 * x
    y[3] = bad
    with pytest.raises(ValueError, match="must be finite numbers of ms"):
        NetworkCorrection().fit(x, y)
    with pytest.raises(ValueError, match="must be finite numbers of ms"):
        NetworkCorrection("affine").fit(y, x)
    assert "DLASCL" not in capfd.readouterr().err


def test_a_negative_offset_holds_its_ratio_below_the_networks_it_was_fitted_on():
    # fitted on 5..50 ms networks; affine, a 1 ms network would be 0.9 - 3 = -2.1 ms
    x = np.linspace(5, 50, 12)
    corr = NetworkCorrection().fit(x, 0.9 * x - 3.0)
    assert corr.form_ == "affine" and corr.low_ms_ == pytest.approx(5.0)
    np.testing.assert_allclose(corr.predict(np.array([1.0, 5.0, 10.0])), [0.3, 1.5, 6.0])
    assert corr.predict(1.0) == pytest.approx(0.3) and corr.predict([2.5])[0] == pytest.approx(0.75)
    again = NetworkCorrection.from_dict(corr.to_dict())
    assert again.parts == corr.parts
    # an artifact saved before low_ms: held from where the map is half its offset above 0
    old = {k: v for k, v in corr.to_dict().items() if k != "low_ms"}
    assert NetworkCorrection.from_dict(old).low_ms_ == pytest.approx(2 * 3.0 / 0.9)
    assert NetworkCorrection.from_dict(old).predict(0.1) > 0
    with pytest.raises(ValueError, match="could predict a latency <= 0"):
        NetworkCorrection.from_dict({**corr.to_dict(), "low_ms": 1.0})
    # a positive offset is an overhead every network pays: affine all the way down
    up = NetworkCorrection().fit(x, 0.9 * x + 3.0)
    assert up.low_ms_ == 0.0 and up.predict(0.0) == pytest.approx(3.0)


def test_latency_predictor_composes_lut_gbdt_and_correction():
    specs, y = device_table("raspi4")
    space = get_space("fbnet-cifar")
    keep = [i for i, s in enumerate(specs) if not (s.kind == "fbnet_block" and i % 3 == 0)]
    model = LatencyPredictor().fit([specs[i] for i in keep], y[keep])
    assert not model.has_network_correction
    measured = [specs[i] for i in keep]
    np.testing.assert_array_equal(model.predict_ops(measured), y[keep])  # measured beats predicted
    unmeasured = [s for i, s in enumerate(specs) if i not in set(keep)]
    assert set(model.predict_sources(unmeasured)) == {"gbdt"}
    rng = random.Random(0)
    table, fixed = model.cost_table(space), model.fixed_cost(space)
    identity = np.array([[space.candidate_op(l, c).is_identity for c in range(9)] for l in range(22)])
    assert table.shape == (22, 9) and np.all(table[~identity] > 0) and np.all(table[identity] == 0)
    for _ in range(20):
        arch = space.sample_arch(rng)
        plain = table[np.arange(22), arch].sum() + fixed
        assert model.predict_network(space, arch) == pytest.approx(plain, rel=1e-12)
        assert model.predict_network(space.network(arch).ops) == pytest.approx(plain, rel=1e-12)
    archs = [space.sample_arch(rng) for _ in range(30)]
    np.testing.assert_allclose(model.predict_networks(space, archs),
                               [model.predict_network(space, a) for a in archs], rtol=1e-12)
    # measured networks: 15% faster than their op sum, minus a fixed 0.2 ms
    nets = [space.network(a) for a in archs]
    sums = np.array([model.network_op_costs(n.ops).sum() for n in nets])  # identities add 0
    corrected = LatencyPredictor(correction="affine").fit(
        [specs[i] for i in keep], y[keep], networks=nets, network_ms=0.85 * sums - 0.2)
    assert corrected.has_network_correction
    assert corrected.correction_.scale_ == pytest.approx(0.85)
    assert corrected.correction_.offset_ms_ == pytest.approx(-0.2)
    arch = space.sample_arch(rng)
    raw = corrected.cost_table(space)[np.arange(22), arch].sum() + corrected.fixed_cost(space)
    assert corrected.predict_network(space, arch) == pytest.approx(0.85 * raw - 0.2)
    with pytest.raises(TypeError, match="give the arch"):
        corrected.predict_network(space)


def test_analytic_costs_and_cost_specs():
    space = get_space("fbnet-cifar")
    arch = space.sample_arch(random.Random(3))
    flops, params = predictors.load("flops"), predictors.load("params")
    assert flops.unit == "flops" and params.unit == "params"
    assert flops.predict_network(space, arch) == space.network(arch).flops
    assert params.predict_network(space, arch) == space.network(arch).params
    table = flops.cost_table(space)
    assert table.shape == (space.num_layers, space.num_candidates)
    assert table[3, 2] == space.candidate_op(3, 2).flops
    assert flops.fixed_cost(space) == sum(op.flops for op in space.fixed_ops())
    # The space's name does as well as the space.
    assert flops.predict_network("fbnet-cifar", arch) == space.network(arch).flops
    np.testing.assert_array_equal(flops.cost_table("fbnet-cifar"), table)
    assert flops.fixed_cost("fbnet-cifar") == flops.fixed_cost(space)
    np.testing.assert_array_equal(flops.predict_networks("fbnet-cifar", [arch]), [space.network(arch).flops])
    with pytest.raises(TypeError, match="give the arch"):
        flops.predict_network("fbnet-cifar")
    with pytest.raises(UsageError, match="unknown cost spec"):
        predictors.load("latency")


def test_load_of_an_unfitted_device_says_how_to_fit(latbench_home):
    with pytest.raises(predictors.ArtifactError, match="latbench fit-predictor --device phone"):
        predictors.load("latbench:phone")


def test_import_needs_neither_torch_nor_onnxruntime():
    code = ("import sys, predictors\n"
            "from latbench.spaces import get_space\n"
            "c = predictors.load('flops')\n"
            "c.cost_table(get_space('fbnet-cifar'))\n"
            "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_prediction_in_row_blocks_equals_one_pass(monkeypatch):
    import predictors.gbdt as gbdt_module

    xs, ys, xt, _ = block_halves("fpga")
    model = GBDTPredictor(base="blend").fit(xs, ys)
    whole = model.predict(xt)
    monkeypatch.setattr(gbdt_module, "CHUNK_ROWS", 7)
    np.testing.assert_allclose(model.predict(xt), whole, rtol=1e-12)  # BLAS may sum in another order


def test_an_identity_keeps_its_own_time_but_adds_nothing_to_a_network():
    """Timed alone, an identity skip measures only the runtime's call overhead; an exported
    network has no node for it. The correction is fitted on, and applied to, network sums
    without identities, and the DNAS cost table agrees with predict_network."""
    space = get_space("fbnet-cifar")
    ops = space.ops()
    rng = np.random.default_rng(0)
    ms = {op: (0.004 if op.is_identity else float(rng.uniform(0.02, 0.2))) for op in ops}
    archs = [space.sample_arch(random.Random(i)) for i in range(12)]
    nets = [space.network(a) for a in archs]
    blocks = np.array([sum(ms[o] for o in n.ops if not o.is_identity) for n in nets])
    measured = 1.2 * blocks  # the network: 1.2 x its non-identity ops, identities free
    model = LatencyPredictor(GBDTPredictor(n_models=1, random_state=0), correction="scale").fit(
        list(ms), list(ms.values()), networks=nets, network_ms=measured)
    identities = [op for op in ops if op.is_identity]
    assert identities
    np.testing.assert_array_equal(model.predict_ops(identities), 0.004)  # the op table is as measured
    np.testing.assert_array_equal(model.network_op_costs(identities), 0.0)
    assert model.correction_.scale_ == pytest.approx(1.2)
    all_skip = space.network([8] * space.num_layers)
    expected = 1.2 * sum(ms[o] for o in all_skip.ops if not o.is_identity)
    assert model.predict_network(all_skip) == pytest.approx(expected)
    table, fixed = model.cost_table(space), model.fixed_cost(space)
    for arch in archs + [[8] * space.num_layers]:
        total = table[np.arange(space.num_layers), arch].sum() + fixed
        assert model.predict_network(space, arch) == pytest.approx(float(model.correct(total)), rel=1e-12)


def test_lists_tuples_and_object_arrays_are_taken_where_arrays_are():
    specs, y = device_table("raspi4")
    model = LatencyPredictor(GBDTPredictor(n_estimators=5)).fit(specs, y)
    ops = get_space("fbnet-cifar").network([0] * 22).ops
    expected = model.predict_ops(list(ops))
    as_objects = np.array(ops, dtype=object)  # e.g. after selecting ops with a numpy mask
    np.testing.assert_allclose(model.predict_ops(as_objects), expected)
    np.testing.assert_allclose(model.gbdt_.predict(as_objects), model.gbdt_.predict(list(ops)))
    assert model.predict_network(as_objects) == model.predict_network(list(ops))
    corr = NetworkCorrection("affine").fit([1.0, 2.0, 3.0, 4.0], [1.1, 2.2, 3.1, 4.3])
    np.testing.assert_allclose(corr.predict([5.0, 6.0]), corr.predict(np.array([5.0, 6.0])))
    assert corr.predict((5.0,)).shape == (1,)


def test_the_lut_sum_baseline_adds_nothing_for_an_identity_as_the_predictor_does():
    from latbench.spaces import get_space
    from predictors.selection import lut_sum_baseline

    space = get_space("fbnet-cifar")
    ops = space.ops()
    lut = LUT.from_arrays(ops, np.ones(len(ops)))  # every op, identities too, timed at 1 ms
    net = space.network([8] * 22)
    identities = sum(op.is_identity for op in net.ops)
    assert identities > 0
    baseline = lut_sum_baseline(lut, ops, np.ones(len(ops)), [net])
    assert baseline[0] == len(net.ops) - identities


@pytest.mark.parametrize("seed", [0, 2, 4])  # the splits where an unseen pool or fc went to 0 ms
def test_a_linear_target_never_predicts_an_op_under_floor_ms(seed):
    """Trees on a linear target can go to 0 (or below) for an unseen avgpool or fc; a search
    would take such a candidate for free."""
    specs, y = device_table("raspi4")
    order = np.random.default_rng(seed).permutation(len(specs))
    train, test = order[:112], order[112:]
    model = GBDTPredictor(target="linear", floor_ms=1e-3).fit([specs[i] for i in train], y[train])
    pred = model.predict([specs[i] for i in test])
    assert pred.min() >= 1e-3 and np.isfinite(pred).all()
    assert np.sum(pred == 1e-3) >= 1  # the floor, not a luckier fit, is what held it up


def test_predict_ops_given_one_op_or_a_key_says_to_pass_a_list():
    specs, y = device_table("raspi4")
    est = LatencyPredictor(GBDTPredictor(n_estimators=10)).fit(specs, y)
    with pytest.raises(TypeError, match=r"got one OpSpec: pass \[spec\] for a single op"):
        est.predict_ops(specs[0])
    with pytest.raises(TypeError, match=r"got one str: .*OpSpec.from_key"):
        est.predict_ops(specs[0].key)
    assert est.predict_ops([specs[0]]).shape == (1,)
