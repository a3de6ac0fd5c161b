"""Cross-validation: choose the GBDT's features, target, base, split and level pull, and measure a
predictor against its two baselines on held-out data.

Baselines, always fitted on the same rows as the predictor:

- ``flops_linear``: latency = a * FLOPs + b (least squares), for ops and for networks;
- ``lut_sum``: a network as the sum of its ops' measured medians, without network-level
  correction (ops the LUT lacks are filled by the ops' FLOPs-linear fit). For held-out ops
  a LUT has no answer, so at op level the second baseline is ``lightgbm_raw``: LightGBM on
  the raw shape columns, log target, no base model.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from latbench.ops import OpSpec
from predictors import metrics
from predictors.correction import NetworkCorrection
from predictors.features import as_spec_matrix, identity_rows, quantities
from predictors.gbdt import MIN_FIT_ROWS, GBDTPredictor

#: Reach tried for the pull towards latency levels (`predictors.levels`): on HW-NAS-Bench's
#: Jetson TX2 blocks it lifts +-10% from 70% to 76% (5 seeds, half the blocks); on its
#: CPU and simulated devices, which have no levels, cross-validation leaves it off.
LEVEL_SNAP = 0.06
#: The starting point of the search, and the values tried for each setting in turn.
DEFAULT_CHOICE = {"features": "derived", "target": "log", "base": "blend", "split": "pooled",
                  "level_snap": 0.0}
SEARCH = (
    ("base", ("blend", "power", "loglinear", "none")),
    ("target", ("log", "linear")),
    ("features", ("derived", "opspec", "raw")),
    ("split", ("pooled", "per_kind")),
    ("level_snap", (0.0, LEVEL_SNAP)),
)
RAW_BASELINE = {"features": "raw", "target": "log", "base": "none", "extra_trees": False,
                "n_estimators": 400, "learning_rate": 0.05}

Progress = Callable[[str, int, int], None]


def kfold(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each of n rows (a seeded random permutation, sizes differ by <= 1)."""
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % folds
    return out


class FlopsLinear:
    """Baseline: latency = a * FLOPs + b, ordinary least squares."""

    def fit(self, flops: Sequence[float], y: Sequence[float]) -> "FlopsLinear":
        flops = np.asarray(flops, dtype=np.float64)
        a = np.c_[flops, np.ones(len(flops))]
        (self.slope_, self.intercept_), *_ = np.linalg.lstsq(a, np.asarray(y, dtype=np.float64), rcond=None)
        return self

    def predict(self, flops: Sequence[float]) -> np.ndarray:
        return self.slope_ * np.asarray(flops, dtype=np.float64) + self.intercept_


def op_flops(specs: Sequence[OpSpec]) -> np.ndarray:
    m = as_spec_matrix(specs)
    return quantities(m)["flops"].astype(np.float64) if len(m) else np.zeros(0)


def oof_predict(specs: Sequence[OpSpec], y: np.ndarray, params: dict, fold_of: np.ndarray) -> np.ndarray:
    """Out-of-fold GBDT predictions: each row predicted by a model that never saw it."""
    m = as_spec_matrix(specs)
    pred = np.zeros(len(m))
    for fold in np.unique(fold_of):
        test = fold_of == fold
        model = GBDTPredictor(**params).fit(m[~test], y[~test])
        pred[test] = model.predict(m[test])
    return pred


#: A setting moves away from the current choice only if its cross-validated mean absolute
#: log error is this much (relative) lower: with ~100 rows, smaller gains are mostly noise.
MIN_GAIN = 0.02


def log_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean |log(pred / true)| over rows with true > 0: a smooth version of +-t accuracy."""
    keep = true > 0
    return float(np.mean(np.abs(np.log(np.maximum(pred[keep], 1e-12) / true[keep]))))


def select_gbdt(specs: Sequence[OpSpec], y: Sequence[float], *, folds: int = 5, seed: int = 0,
                base_params: dict | None = None, progress: Progress | None = None
                ) -> tuple[dict, list[dict]]:
    """Settings of the best GBDT by K-fold mean absolute log error, searched one setting at a
    time from `DEFAULT_CHOICE` (a change must win by `MIN_GAIN`); returns (settings, every
    tried configuration with its metrics and whether it was chosen)."""
    y = np.asarray(y, dtype=np.float64)
    fold_of = kfold(len(y), folds, seed)
    fixed = dict(base_params or {})
    tried: dict[tuple, dict] = {}
    best = dict(DEFAULT_CHOICE)
    total = 1 + sum(len(v) - 1 for _, v in SEARCH)

    def trial(choice: dict) -> dict:
        key = tuple(sorted(choice.items()))
        if key not in tried:
            pred = oof_predict(specs, y, {**fixed, **choice}, fold_of)
            m = metrics.evaluate(pred, y)
            m["log_error"] = log_error(pred, y)
            tried[key] = {"settings": dict(choice), "metrics": m}
            if progress:
                progress("cross-validating GBDT settings", len(tried), total)
        return tried[key]

    for name, values in SEARCH:
        current = trial(best)["metrics"]["log_error"]
        for value in values:
            err = trial({**best, name: value})["metrics"]["log_error"]
            if err < current * (1 - MIN_GAIN):
                best[name], current = value, err
    table = [{**t, "chosen": t["settings"] == best} for t in tried.values()]
    return {**fixed, **best}, table


def nests(specs: Sequence[OpSpec], folds: int) -> bool:
    """Whether every fit of a nested search has rows enough: the inner folds fit on the outer
    training part less its largest inner fold, in the worst case all ops that are fitted."""
    n = len(specs)
    n_fit = n - int(identity_rows(as_spec_matrix(specs)).sum()) if n else 0
    largest_outer = n - n // folds  # training part of the outer folds, at most
    return n_fit - -(-n // folds) - -(-largest_outer // folds) >= MIN_FIT_ROWS


def nested_oof_predict(specs: Sequence[OpSpec], y: np.ndarray, base_params: dict, fold_of: np.ndarray,
                       *, folds: int, seed: int, progress: Progress | None = None
                       ) -> tuple[np.ndarray, list[dict]]:
    """Out-of-fold predictions of the whole procedure, the settings search included: each fold
    is predicted with settings chosen (`select_gbdt`) on the other folds alone, so the choice
    does not flatter the held-out score. Returns the predictions and each fold's settings."""
    m = as_spec_matrix(specs)
    pred = np.zeros(len(m))
    chosen = []
    folds_here = np.unique(fold_of)
    for i, fold in enumerate(folds_here):
        if progress:
            progress("nested cross-validation (settings chosen inside each fold)", i, len(folds_here))
        test = fold_of == fold
        params, _ = select_gbdt(m[~test], y[~test], folds=folds, seed=seed, base_params=base_params)
        pred[test] = GBDTPredictor(**params).fit(m[~test], y[~test]).predict(m[test])
        chosen.append({k: params[k] for k in DEFAULT_CHOICE})
    return pred, chosen


def evaluate_ops(specs: Sequence[OpSpec], y: Sequence[float], params: dict, *, folds: int = 5,
                 seed: int = 0, nested_base: dict | None = None, progress: Progress | None = None) -> dict:
    """K-fold held-out metrics of the GBDT with `params` and of the two op-level baselines,
    plus the out-of-fold predictions (for the plot). With `nested_base` (the fixed settings of
    a search), the GBDT is scored nested (`nested_oof_predict`) where the rows allow (`nests`)."""
    y = np.asarray(y, dtype=np.float64)
    fold_of = kfold(len(y), folds, seed)
    nested = nested_base is not None and nests(specs, folds)
    if nested:
        pred, fold_settings = nested_oof_predict(specs, y, nested_base, fold_of, folds=folds, seed=seed,
                                                 progress=progress)
    else:
        pred, fold_settings = oof_predict(specs, y, params, fold_of), None
    raw = oof_predict(specs, y, RAW_BASELINE, fold_of)
    flops = op_flops(specs)
    lin = np.zeros(len(y))
    for fold in np.unique(fold_of):
        test = fold_of == fold
        lin[test] = FlopsLinear().fit(flops[~test], y[~test]).predict(flops[test])
    return {
        "folds": int(len(np.unique(fold_of))), "rows": int(len(y)), "nested": nested,
        "fold_settings": fold_settings,
        "predictor": metrics.evaluate(pred, y), "flops_linear": metrics.evaluate(lin, y),
        "lightgbm_raw": metrics.evaluate(raw, y),
        "pred": pred, "true": y,
    }


def evaluate_networks(summed_ms: Sequence[float], network_flops: Sequence[float],
                      lut_sum_ms: Sequence[float], measured_ms: Sequence[float], *,
                      correction: str = "auto", train: np.ndarray | None = None,
                      folds: int = 5, seed: int = 0) -> dict:
    """Held-out metrics on whole networks: the corrected sum vs FLOPs-linear vs LUT sum.

    `summed_ms` is each network's op-prediction sum (LUT + GBDT), `lut_sum_ms` the
    uncorrected LUT sum. With `train` (a boolean mask) the correction and the FLOPs line
    are fitted on those networks and scored on the rest; otherwise K-fold.
    """
    s = np.asarray(summed_ms, dtype=np.float64)
    f = np.asarray(network_flops, dtype=np.float64)
    lut = np.asarray(lut_sum_ms, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    if train is not None:
        splits = [np.asarray(train, dtype=bool)]
    else:
        fold_of = kfold(len(y), folds, seed)
        splits = [fold_of != k for k in np.unique(fold_of)]
    test_mask = np.zeros(len(y), dtype=bool)
    pred = np.zeros(len(y))
    lin = np.zeros(len(y))
    forms = []
    for tr in splits:
        te = ~tr
        corr = NetworkCorrection(correction).fit(s[tr], y[tr])
        forms.append(corr.form_)
        pred[te] = corr.predict(s[te])
        lin[te] = FlopsLinear().fit(f[tr], y[tr]).predict(f[te])
        test_mask |= te
    return {
        "networks": int(len(y)), "held_out": int(test_mask.sum()),
        "predictor": metrics.evaluate(pred[test_mask], y[test_mask]),
        "flops_linear": metrics.evaluate(lin[test_mask], y[test_mask]),
        "lut_sum": metrics.evaluate(lut[test_mask], y[test_mask]),
        "correction_forms": sorted(set(forms)),
        "pred": pred[test_mask], "true": y[test_mask],
    }


def lut_sum_baseline(lut, specs: Sequence[OpSpec], latency_ms, networks) -> np.ndarray:
    """The LUT-sum baseline for whole networks: measured medians, FLOPs-linear for ops never
    measured, no network correction. Identities add 0, as in the predictor's own sum
    (`LatencyPredictor.network_op_costs`), so the two differ only in what is compared."""
    line = FlopsLinear().fit(op_flops(specs), latency_ms)
    sums = []
    for net in networks:
        ops = list(net.ops)
        values = lut.lookup(ops)
        missing = np.isnan(values)
        if missing.any():
            values[missing] = line.predict(op_flops([op for op, m in zip(ops, missing) if m]))
        values[np.fromiter((op.is_identity for op in ops), dtype=bool, count=len(ops))] = 0.0
        sums.append(values.sum())
    return np.array(sums)
