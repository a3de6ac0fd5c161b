"""LatencyPredictor: measured where measured (LUT), GBDT elsewhere, corrected per network.

    predict_ops(specs)          LUT median if the key was measured, else the GBDT
    predict_network(...)        correction(sum of network_op_costs: predict_ops, identities 0)
    cost_table / fixed_cost     per-op costs, uncorrected (see predictors.costmodel)

Without measured networks there is no correction: a network is the plain sum of its ops,
and `has_network_correction` says so.
"""

from __future__ import annotations

from itertools import repeat
from typing import Sequence

import numpy as np

from latbench.ops import Network, OpSpec
from predictors._estimator import Estimator
from predictors.correction import FORMS, NetworkCorrection
from predictors.costmodel import CostModel
from predictors.features import specs_from_matrix
from predictors.gbdt import GBDTPredictor
from predictors.lut import LUT

_CACHE_MAX = 2_000_000


class LatencyPredictor(CostModel, Estimator):
    """Per-device latency in milliseconds.

    Parameters
    ----------
    gbdt : the GBDTPredictor settings to fit for unmeasured ops (default GBDTPredictor()).
    correction : network-level correction form, ``auto`` (chosen by leave-one-out) or one of
        ``none``, ``scale``, ``affine`` (see `predictors.correction`).
    use_lut : answer measured keys with their measured median (False: GBDT everywhere).
    """

    unit = "ms"
    _constraints = {"correction": ("auto",) + FORMS, "use_lut": (True, False)}

    def __init__(self, gbdt: GBDTPredictor | None = None, *, correction: str = "auto",
                 use_lut: bool = True):
        self.gbdt = gbdt
        self.correction = correction
        self.use_lut = use_lut

    # ---- fitting --------------------------------------------------------------------------

    def fit(self, X, y, *, networks: Sequence | None = None, network_ms: Sequence[float] | None = None,
            lut: LUT | None = None) -> "LatencyPredictor":
        """Fit on measured ops `X` (OpSpecs or a spec matrix) with latencies `y` (ms), and
        optionally measured whole `networks` (Network objects or lists of OpSpec) with their
        latencies `network_ms`. `lut` (with spreads from the store) replaces the plain LUT of
        (X, y)."""
        self._validate()
        if self.gbdt is not None and not isinstance(self.gbdt, GBDTPredictor):
            raise ValueError(f"The 'gbdt' parameter of LatencyPredictor must be a GBDTPredictor or "
                             f"None. Got {type(self.gbdt).__name__}.")
        specs = _as_specs(X)
        y = np.asarray(y, dtype=np.float64).ravel()
        template = self.gbdt if self.gbdt is not None else GBDTPredictor()
        self.gbdt_ = GBDTPredictor(**template.get_params()).fit(specs, y)
        self.lut_ = lut if lut is not None else LUT.from_arrays(specs, y)
        self._cache: dict[OpSpec, float] = {}
        self.correction_ = None
        networks = list(networks or [])
        if networks:
            if network_ms is None or len(network_ms) != len(networks):
                raise ValueError("network_ms must give one latency per network")
            sums = np.array([np.sum(self.network_op_costs(_ops_of(n))) for n in networks])
            self.correction_ = NetworkCorrection(self.correction).fit(sums, network_ms)
        return self

    @property
    def has_network_correction(self) -> bool:
        """True when measured networks corrected the sum of ops; False: plain sum."""
        self._check_fitted("gbdt_")
        return self.correction_ is not None

    # ---- prediction -----------------------------------------------------------------------

    def predict_ops(self, specs) -> np.ndarray:
        """Latency in ms of each op: measured median where measured, GBDT elsewhere.

        Each distinct spec is looked up or predicted once (and remembered), so a batch of
        ops drawn from a search space costs about one dictionary lookup per op.
        """
        self._check_fitted("gbdt_")
        specs = _as_specs(specs)
        index: dict[OpSpec, int] = {}
        inverse = np.fromiter((index.setdefault(s, len(index)) for s in specs), dtype=np.int64,
                              count=len(specs))
        unique = list(index)
        cache = self._known()
        values = np.fromiter(map(cache.get, unique, repeat(np.nan, len(unique))), dtype=np.float64,
                             count=len(unique))
        todo = np.flatnonzero(np.isnan(values))
        if len(todo):
            new = [unique[i] for i in todo]
            values[todo] = predicted = self.gbdt_.predict(new)
            if len(cache) + len(new) > _CACHE_MAX:
                self.clear_cache()
                cache = self._known()
            cache.update(zip(new, predicted.tolist()))
        return values[inverse]

    def network_op_costs(self, specs) -> np.ndarray:
        """Latency each op adds to a network: `predict_ops`, but 0 for an identity (a skip
        with cin == cout and stride 1). An identity adds no node to an exported network, so
        inside one it costs nothing; timed alone, all it measures is the runtime's call
        overhead. HW-NAS-Bench's tables record identities as 0 ms for the same reason."""
        specs = _as_specs(specs)
        values = self.predict_ops(specs)
        values[np.fromiter((s.is_identity for s in specs), dtype=bool, count=len(specs))] = 0.0
        return values

    def clear_cache(self) -> None:
        """Forget remembered GBDT answers (e.g. to time prediction from scratch)."""
        self._cache = {}

    def _known(self) -> dict[OpSpec, float]:
        """Spec -> latency already known: the LUT's medians, then every GBDT answer so far."""
        if not self._cache and self.use_lut:
            self._cache.update(self.lut_.by_spec())
        return self._cache

    def predict(self, X) -> np.ndarray:
        """scikit-learn name for `predict_ops`."""
        return self.predict_ops(X)

    def predict_sources(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """'lut' or 'gbdt' for each op: where its prediction comes from."""
        self._check_fitted("gbdt_")
        measured = self.lut_.by_spec() if self.use_lut else {}
        return np.array(["lut" if s in measured else "gbdt" for s in _as_specs(specs)])

    def correct(self, total):
        """Network-level correction of a summed latency (identity without measured networks)."""
        self._check_fitted("gbdt_")
        return total if self.correction_ is None else self.correction_.predict(total)

    @property
    def correction_parts(self) -> tuple[float, float, float]:
        """(scale, offset_ms, low_ms) of `correct` (see `predictors.correction`); (1, 0, 0) without
        measured networks. The DNAS cost term applies the same map in torch."""
        self._check_fitted("gbdt_")
        return (1.0, 0.0, 0.0) if self.correction_ is None else self.correction_.parts

    def describe(self) -> str:
        self._check_fitted("gbdt_")
        g = self.gbdt_
        text = (f"LUT of {len(self.lut_)} ops; GBDT ({g.features} features, {g.target} target, "
                f"base {g.base}, {g.split}"
                + (f", pulled up to {100 * g.level_snap:g}% towards latency levels" if g.level_snap else "") + ")")
        if self.correction_ is None:
            return text + "; no measured networks: a network is the plain sum of its ops"
        c = self.correction_
        below = f"; its ratio held below {c.low_ms_:.4f} ms" if c.low_ms_ > 0 else ""
        return (text + f"; network correction {c.form_} (scale {c.scale_:.4f}, offset "
                       f"{c.offset_ms_:+.4f} ms{below}, from {c.n_networks_} networks)")


def _as_specs(X) -> list[OpSpec]:
    if isinstance(X, np.ndarray) and not (X.ndim == 1 and X.dtype == object):
        return specs_from_matrix(X)
    if isinstance(X, (OpSpec, str)):  # one op, or its key: Python's 'not iterable' said neither
        raise TypeError(f"expected a list of OpSpec objects (or a spec matrix); got one "
                        f"{type(X).__name__}: pass [spec] for a single op"
                        + (" (OpSpec.from_key(key) makes one of a key)" if isinstance(X, str) else ""))
    specs = X if isinstance(X, list) else list(X)
    for s in specs:
        if not isinstance(s, OpSpec):
            raise TypeError(f"expected OpSpec objects (or a spec matrix); got {type(s).__name__}")
    return specs


def _ops_of(network) -> Sequence[OpSpec]:
    return network.ops if isinstance(network, Network) else list(network)
