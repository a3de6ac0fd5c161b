"""Network-level correction: a measured network is not the sum of its measured ops.

Run alone, every op pays a call's overhead and starts with cold caches; inside a network
the runtime fuses, reuses buffers and pays the overhead once. The correction maps the
summed op latency S of a network to its measured latency:

    network_ms = scale * S + offset_ms                  (S >= low_ms)
    network_ms = S * (scale + offset_ms / low_ms)       (S <  low_ms)

An affine map keeps the DNAS cost linear in the per-layer costs: the expected corrected
cost is ``scale * (sum_l sum_c p_lc * cost_table[l, c] + fixed_cost) + offset_ms``.
A negative offset says nothing below the networks it was fitted on, and would take a space's
smallest networks under 0 ms (on this host, an all-skip network measured at 0.12 ms was
predicted at -0.005 ms): below the smallest fitted sum (`low_ms`, set only when the offset
is negative) the correction keeps the ratio it has there, so it stays positive and continuous.
``form="auto"`` picks ``none``, ``scale`` or ``affine`` by leave-one-out error on the
measured networks (10-fold above 30 networks); the simpler form unless another is more
than 2% (relative) better. With fewer than MIN_AUTO_NETWORKS it picks ``none``: one or two
networks cannot tell a correction from their own noise, and a scale fitted on one (say, the
network `nas search --verify` measured) would move every later prediction.
"""

from __future__ import annotations

import numpy as np

from predictors._estimator import Estimator

FORMS = ("none", "scale", "affine")
MIN_AFFINE_NETWORKS = 4
MIN_AUTO_NETWORKS = 3


class NetworkCorrection(Estimator):
    """network_ms = scale_ * summed_op_ms + offset_ms_, fitted on relative error."""

    _constraints = {"form": ("auto",) + FORMS}

    def __init__(self, form: str = "auto"):
        self.form = form

    def fit(self, summed_ms, measured_ms) -> "NetworkCorrection":
        self._validate()
        x, y = _pair(summed_ms, measured_ms)
        if len(x) == 0:
            raise ValueError("NetworkCorrection needs at least one measured network to fit")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):  # NaN passes `<= 0`, then
            # LAPACK prints to stderr and raises LinAlgError
            raise ValueError("network latencies and op sums must be finite numbers of ms; "
                             "leave out the networks not measured")
        if np.any(y <= 0) or np.any(x <= 0):
            raise ValueError("network latencies and op sums must be > 0 ms")
        candidates = [f for f in FORMS if f != "affine" or len(x) >= MIN_AFFINE_NETWORKS]
        if self.form != "auto":
            form = self.form if self.form in candidates else "scale"
            self.cv_mape_ = {}
        elif len(x) < MIN_AUTO_NETWORKS:
            self.cv_mape_, form = {}, "none"
        else:
            self.cv_mape_ = {f: _loo_mape(f, x, y) for f in candidates}
            form = _choose(self.cv_mape_)
        self.form_ = form
        self.scale_, self.offset_ms_, self.low_ms_ = _solve(form, x, y)
        self.n_networks_ = int(len(x))
        return self

    def predict(self, summed_ms):
        """Corrected latency of summed op latencies (float, numpy array or torch tensor)."""
        self._check_fitted("scale_")
        if isinstance(summed_ms, (list, tuple)):  # a list * float is a TypeError
            summed_ms = np.asarray(summed_ms, dtype=np.float64)
        return piecewise(summed_ms, self.scale_, self.offset_ms_, self.low_ms_)

    @property
    def parts(self) -> tuple[float, float, float]:
        """(scale, offset_ms, low_ms): what `predictors.cost_term` needs to apply it in torch."""
        self._check_fitted("scale_")
        return self.scale_, self.offset_ms_, self.low_ms_

    def to_dict(self) -> dict:
        self._check_fitted("scale_")
        return {"form": self.form, "form_": self.form_, "scale": self.scale_,
                "offset_ms": self.offset_ms_, "low_ms": self.low_ms_, "n_networks": self.n_networks_,
                "cv_mape": self.cv_mape_}

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkCorrection":
        est = cls(form=data["form"])
        est.form_, est.scale_, est.offset_ms_ = data["form_"], float(data["scale"]), float(data["offset_ms"])
        if "low_ms" in data:
            est.low_ms_ = float(data["low_ms"])
        else:  # saved before low_ms: its smallest network is not known, so hold the ratio from
            # where the affine map is half its offset above 0
            est.low_ms_ = -2.0 * est.offset_ms_ / est.scale_ if est.offset_ms_ < 0 < est.scale_ else 0.0
        if not (np.isfinite(est.scale_) and est.scale_ > 0 and np.isfinite(est.offset_ms_)
                and np.isfinite(est.low_ms_) and est.low_ms_ >= 0
                and (est.offset_ms_ >= 0 or est.scale_ * est.low_ms_ + est.offset_ms_ > 0)):
            raise ValueError(f"its correction (scale {est.scale_}, offset {est.offset_ms_} ms, low "
                             f"{est.low_ms_} ms) could predict a latency <= 0")
        est.n_networks_, est.cv_mape_ = int(data["n_networks"]), dict(data.get("cv_mape", {}))
        return est


def piecewise(summed_ms, scale: float, offset_ms: float, low_ms: float):
    """scale * S + offset_ms, and S times its ratio at `low_ms` below it (0: affine everywhere).
    For floats, numpy arrays and torch tensors alike, so the DNAS cost term applies exactly
    what `predict_network` does."""
    affine = scale * summed_ms + offset_ms
    if low_ms <= 0:
        return affine
    low_scale = scale + offset_ms / low_ms
    if isinstance(summed_ms, (int, float, np.floating, np.integer)):
        return summed_ms * low_scale if summed_ms < low_ms else affine
    if isinstance(summed_ms, np.ndarray):
        return np.where(summed_ms < low_ms, summed_ms * low_scale, affine)
    import torch  # only reached with a tensor: predictors runs without torch

    return torch.where(summed_ms < low_ms, summed_ms * low_scale, affine)


def _solve(form: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(scale, offset_ms, low_ms) by least squares on relative error (rows weighted by
    1 / measured); low_ms is the smallest fitted sum where the offset is negative, else 0."""
    if form == "none":
        return 1.0, 0.0, 0.0
    w = 1.0 / y
    if form == "affine":
        a = np.c_[x * w, w]
        (scale, offset), *_ = np.linalg.lstsq(a, np.ones(len(y)), rcond=None)
        if scale > 0 and scale * x.min() + offset > 0:  # else a network it was fitted on is <= 0 ms
            return float(scale), float(offset), float(x.min()) if offset < 0 else 0.0
    scale = float(np.sum(x * w) / np.sum((x * w) ** 2))
    return scale, 0.0, 0.0


def _loo_mape(form: str, x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out relative error of `form` (10-fold above 30 networks: same idea, cheaper)."""
    n = len(x)
    fold_of = np.arange(n) if n <= 30 else np.random.default_rng(0).permutation(n) % 10
    errors = np.zeros(n)
    for fold in np.unique(fold_of):
        test = fold_of == fold
        keep = ~test
        fit_form = form if form != "affine" or keep.sum() >= MIN_AFFINE_NETWORKS - 1 else "scale"
        errors[test] = np.abs(piecewise(x[test], *_solve(fit_form, x[keep], y[keep])) - y[test]) / y[test]
    return float(np.mean(errors))


def _choose(cv: dict[str, float]) -> str:
    """The simplest form within 2% (relative) of the best leave-one-out error."""
    best = min(cv.values())
    for form in FORMS:
        if form in cv and cv[form] <= best * 1.02 + 1e-12:
            return form
    return min(cv, key=cv.get)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"summed and measured latencies differ in length: {len(a)} vs {len(b)}")
    return a, b
