"""Accuracy metrics of latency predictions, the same in the CLI, the report and the benchmarks.

- ``acc_5``, ``acc_10``, ``acc_15``: share of predictions with |pred - true| / true <= t;
- ``rmse_ms``: root mean squared error in milliseconds;
- ``mape``: mean of |pred - true| / true;
- ``spearman``, ``kendall``: rank correlations (what a search needs: the right order).

Relative metrics are undefined where the true value is 0 (an identity op that a runtime
removes): those rows are left out of them and counted in ``n_zero_true``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

THRESHOLDS = (0.05, 0.10, 0.15)
METRIC_NAMES = ("n", "acc_5", "acc_10", "acc_15", "rmse_ms", "mape", "spearman", "kendall")


def accuracy_within(pred: Sequence[float], true: Sequence[float], tolerance: float) -> float:
    """Share of rows with |pred - true| / true <= tolerance (rows with true <= 0 left out)."""
    pred, true = _pair(pred, true)
    keep = true > 0
    if not keep.any():
        return float("nan")
    return float(np.mean(within(pred[keep], true[keep], tolerance)))


def within(pred: Sequence[float], true: Sequence[float], tolerance: float) -> np.ndarray:
    """Whether each row has |pred - true| / true <= tolerance (False where true <= 0): the
    rule of `accuracy_within`, for anything that marks rows by it (the report's picture)."""
    pred, true = _pair(pred, true)
    rel = np.abs(pred - true) / np.where(true > 0, true, np.nan)
    # A tiny slack so that a prediction exactly on the band edge counts despite rounding.
    return (true > 0) & (rel <= tolerance * (1 + 1e-9))


def rmse(pred: Sequence[float], true: Sequence[float]) -> float:
    pred, true = _pair(pred, true)
    return float(np.sqrt(np.mean((pred - true) ** 2))) if len(true) else float("nan")


def mape(pred: Sequence[float], true: Sequence[float]) -> float:
    pred, true = _pair(pred, true)
    keep = true > 0
    return float(np.mean(np.abs(pred[keep] - true[keep]) / true[keep])) if keep.any() else float("nan")


def spearman(pred: Sequence[float], true: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    pred, true = _pair(pred, true)
    if len(true) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return float(spearmanr(pred, true).statistic)


def kendall(pred: Sequence[float], true: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    pred, true = _pair(pred, true)
    if len(true) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return float(kendalltau(pred, true).statistic)


def evaluate(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Every metric of `METRIC_NAMES` (plus ``n_zero_true``) for one set of predictions."""
    pred, true = _pair(pred, true)
    out: dict[str, float] = {"n": int(len(true))}
    for t in THRESHOLDS:
        out[f"acc_{round(t * 100)}"] = accuracy_within(pred, true, t)
    out.update(rmse_ms=rmse(pred, true), mape=mape(pred, true), spearman=spearman(pred, true),
               kendall=kendall(pred, true), n_zero_true=int(np.sum(true <= 0)))
    return out


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each metric over repeated runs (e.g. seeds)."""
    out = {}
    for name in METRIC_NAMES:
        values = np.array([r[name] for r in runs if name in r and not _isnan(r[name])], dtype=float)
        out[name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                     "std": float(values.std()) if len(values) else float("nan")}
    return out


def format_row(label: str, m: dict[str, float]) -> list:
    """One table row: label, n, accuracies in %, RMSE, MAPE in %, rank correlations."""
    def pct(v):
        return "-" if _isnan(v) else f"{100 * v:.1f}"

    def num(v, fmt=".3f"):
        return "-" if _isnan(v) else format(v, fmt)

    return [label, int(m["n"]), pct(m["acc_5"]), pct(m["acc_10"]), pct(m["acc_15"]),
            num(m["rmse_ms"], ".4g"), pct(m["mape"]), num(m["spearman"]), num(m["kendall"])]


TABLE_COLUMNS = ["predictor", "n", "+-5%", "+-10%", "+-15%", "rmse_ms", "mape%", "spearman", "kendall"]


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"predictions and true values differ in length: {len(pred)} vs {len(true)}")
    return pred, true


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
