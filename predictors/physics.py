"""Physically grounded base models the GBDT corrects: it learns the residual, not the whole curve.

With about a hundred measured ops, trees alone cannot learn how latency scales with size;
a base model that already scales right leaves them only the device's quirks (cache
spills, kernel choices). Two bases, compared by cross-validation:

- `PowerLawBase`: an op is the sum of its sub-ops (expand 1x1, depthwise, pointwise 1x1,
  full kxk conv, pool; see `predictors.features.SUB_OPS`), each timed by a power law in its
  MACs, input, output and weight bytes, plus terms linear in channel-shuffle and residual
  bytes and in the number of kernels launched, plus a constant call overhead. Fitted by
  least squares on log latency (the error that matters is relative).
- `LogLinearBase`: ridge regression of log latency on the logs of all derived features;
  one power law for the whole op.

Both predict milliseconds and serialise to plain JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import numpy as np

from latbench.validation import Interval
from predictors._estimator import Estimator
from predictors.features import as_spec_matrix, features_from_quantities, quantities

ROLES = ("expand", "depthwise", "pointwise", "full", "pool")
_N_POWER = 4  # log MACs, log input bytes, log output bytes, log weight bytes
#: Linear terms: (quantity, scale that makes its coefficient O(1) at the start).
_LINEAR = (("shuffle_bytes", 1e-6), ("add_bytes", 1e-6), ("kernels", 1e-2), (None, 1e-2))


def _power_design(q: dict[str, np.ndarray]) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    nbytes = q["dtype_bytes"].astype(np.float64)
    n = len(nbytes)
    terms = []
    for role in ROLES:
        if role == "pool":
            macs = q["_in_pool"]
            cols = (macs, q["_in_pool"] * nbytes, q["cout"] * nbytes, np.zeros(n))
        else:
            macs = q[f"macs_{role}"]
            cols = (macs, q[f"_in_{role}"] * nbytes, q[f"_out_{role}"] * nbytes,
                    q[f"_weights_{role}"] * nbytes)
        logs = np.column_stack([np.log1p(np.asarray(c, dtype=np.float64)) for c in cols])
        terms.append((np.asarray(macs) > 0, logs))
    linear = np.column_stack([np.ones(n) * scale if name is None
                              else q[name].astype(np.float64) * scale for name, scale in _LINEAR])
    return terms, linear


def _power_predict(theta: np.ndarray, design) -> np.ndarray:
    terms, linear = design
    width = _N_POWER + 1
    out = linear @ np.exp(theta[len(ROLES) * width:])
    for i, (present, logs) in enumerate(terms):
        a = theta[i * width:(i + 1) * width]
        out = out + np.where(present, np.exp(np.clip(a[0] + logs @ a[1:], -60.0, 60.0)), 0.0)
    return out


def _borrow_unseen_roles(theta: np.ndarray, terms, width: int) -> np.ndarray:
    """Sub-op kinds with no row in the fit get the row-weighted mean law of those that have
    rows: their own parameters only felt the penalty, which pulls them to a flat 1 ms
    (HW-NAS-Bench raspi4 without its two avgpools: 37x and 12x too slow)."""
    counts = np.array([present.sum() for present, _ in terms], dtype=np.float64)
    if not counts.any() or counts.all():
        return theta
    theta = theta.copy()
    laws = theta[:len(terms) * width].reshape(len(terms), width)
    laws[counts == 0] = (counts[:, None] * laws).sum(axis=0) / counts.sum()
    return theta


class PowerLawBase(Estimator):
    """Sum of per-sub-op power laws plus linear overheads (see the module docstring).

    Parameters
    ----------
    reg : L2 penalty on the parameters (towards 0: a flat 1 ms), so the laws of sub-ops rare
        in the data stay tame; a sub-op with no row at all borrows the others' law.
    max_exponent : each power law's exponents lie in [0, max_exponent]: a sub-op's time does
        not fall as its work or its bytes grow. Unbounded, the four logs (MACs, input, output
        and weight bytes) are nearly collinear in a hundred rows, and a fit may trade
        MACs^-12 against output^8: exact on the rows it saw, several times off one layer
        further (HW-NAS-Bench edgegpu, half of the blocks: 5.5x on a block never seen).
    floor_ms : latencies below this (an op a runtime timed as 0) are raised to it before logs.
    max_nfev : evaluation budget of the least-squares solver.
    """

    _constraints = {"reg": Interval(float, 0), "max_exponent": Interval(float, 0.1),
                    "floor_ms": Interval(float, 1e-9), "max_nfev": Interval(int, 10)}

    def __init__(self, reg: float = 1e-2, *, max_exponent: float = 1.5, floor_ms: float = 1e-3,
                 max_nfev: int = 3000):
        self.reg = reg
        self.max_exponent = max_exponent
        self.floor_ms = floor_ms
        self.max_nfev = max_nfev

    def fit(self, X, y) -> "PowerLawBase":
        from scipy.optimize import least_squares

        self._validate()
        m = as_spec_matrix(X)
        y = np.maximum(_targets(y, len(m)), self.floor_ms)
        design = _power_design(quantities(m))
        width = _N_POWER + 1
        theta0 = np.zeros(len(ROLES) * width + len(_LINEAR))
        for i in range(len(ROLES)):
            theta0[i * width] = np.log(np.median(y)) - 4.0
            theta0[i * width + 1] = 0.5
        log_y = np.log(y)

        def residuals(theta):
            return np.r_[np.log(np.maximum(_power_predict(theta, design), 1e-12)) - log_y,
                         self.reg * theta]

        lower, upper = np.full(len(theta0), -np.inf), np.full(len(theta0), np.inf)
        for i in range(len(ROLES)):  # exponents bounded; each term's log-coefficient free
            lower[i * width + 1:(i + 1) * width] = 0.0
            upper[i * width + 1:(i + 1) * width] = self.max_exponent
        solution = least_squares(residuals, np.clip(theta0, lower, upper), method="trf",
                                 max_nfev=self.max_nfev, bounds=(lower, upper))
        self.theta_ = _borrow_unseen_roles(solution.x, design[0], width)
        return self

    def predict(self, X) -> np.ndarray:
        """Latency in ms of each op of `X` (OpSpecs or a spec matrix)."""
        self._check_fitted("theta_")
        return self.predict_quantities(quantities(as_spec_matrix(X)))

    def predict_quantities(self, q: dict[str, np.ndarray], derived: np.ndarray | None = None) -> np.ndarray:
        """`predict` from `predictors.features.quantities` computed once by the caller."""
        self._check_fitted("theta_")
        return np.maximum(_power_predict(self.theta_, _power_design(q)), self.floor_ms)

    def to_dict(self) -> dict:
        self._check_fitted("theta_")
        return {"type": "power", "params": self.get_params(), "theta": self.theta_.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "PowerLawBase":
        est = cls(**data["params"])
        est.theta_ = np.array(data["theta"], dtype=np.float64)
        return est


class LogLinearBase(Estimator):
    """Ridge regression of log latency on standardised log(1 + feature), intercept unpenalised."""

    _constraints = {"alpha": Interval(float, 0), "floor_ms": Interval(float, 1e-9)}

    def __init__(self, alpha: float = 1.0, *, floor_ms: float = 1e-3):
        self.alpha = alpha
        self.floor_ms = floor_ms

    @staticmethod
    def _logs(q: dict[str, np.ndarray], derived: np.ndarray | None = None) -> np.ndarray:
        if derived is None:
            derived = features_from_quantities(q, len(q["cin"]), "derived")
        return np.log1p(np.abs(derived))

    def fit(self, X, y) -> "LogLinearBase":
        self._validate()
        m = as_spec_matrix(X)
        y = np.maximum(_targets(y, len(m)), self.floor_ms)
        logs = self._logs(quantities(m))
        mu, sd = logs.mean(axis=0), logs.std(axis=0)
        keep = sd > 0
        a = np.c_[(logs[:, keep] - mu[keep]) / sd[keep], np.ones(len(m))]
        penalty = self.alpha * np.eye(a.shape[1])
        penalty[-1, -1] = 0.0
        coef = np.linalg.solve(a.T @ a + penalty, a.T @ np.log(y))
        self.mean_, self.scale_, self.keep_, self.coef_ = mu, sd, keep, coef
        return self

    def predict(self, X) -> np.ndarray:
        """Latency in ms of each op of `X` (OpSpecs or a spec matrix)."""
        self._check_fitted("coef_")
        return self.predict_quantities(quantities(as_spec_matrix(X)))

    def predict_quantities(self, q: dict[str, np.ndarray], derived: np.ndarray | None = None) -> np.ndarray:
        """`predict` from `predictors.features.quantities` (and the ``derived`` feature matrix,
        when the caller has it) computed once by the caller."""
        self._check_fitted("coef_")
        # Standardisation folded into the weights: one matrix-vector product.
        weights = np.zeros(len(self.keep_))
        weights[self.keep_] = self.coef_[:-1] / self.scale_[self.keep_]
        intercept = self.coef_[-1] - float(weights[self.keep_] @ self.mean_[self.keep_])
        return np.exp(np.clip(self._logs(q, derived) @ weights + intercept, -60.0, 60.0))

    def to_dict(self) -> dict:
        self._check_fitted("coef_")
        return {"type": "loglinear", "params": self.get_params(), "mean": self.mean_.tolist(),
                "scale": self.scale_.tolist(), "keep": self.keep_.tolist(), "coef": self.coef_.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "LogLinearBase":
        est = cls(**data["params"])
        est.mean_ = np.array(data["mean"], dtype=np.float64)
        est.scale_ = np.array(data["scale"], dtype=np.float64)
        est.keep_ = np.array(data["keep"], dtype=bool)
        est.coef_ = np.array(data["coef"], dtype=np.float64)
        return est


BASES = {"power": PowerLawBase, "loglinear": LogLinearBase}


def base_from_dict(data: dict):
    kind = data.get("type")
    if kind not in BASES:
        raise ValueError(f"unknown base model type {kind!r}")
    return BASES[kind].from_dict(data)


def _targets(y, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)} values")
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise ValueError("y must hold finite latencies >= 0 (milliseconds)")
    return y
