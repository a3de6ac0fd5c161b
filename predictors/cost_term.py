"""The expected cost of a supernet as a differentiable torch scalar.

Imports torch, so `predictors/__init__.py` must not import this module at import
time: everything else in `predictors` runs without torch.

FBNet's cost of a mixture of candidates: for every searchable layer, the
candidates' probabilities times their costs, summed over layers, plus the cost of
the fixed ops (stem, head, pool, classifier). The gradient with respect to the
probabilities is the cost table itself, so it flows back to the architecture
parameters through whatever softmax produced the probabilities.

A latency predictor's network-level correction is affine (scale * sum + offset; below
`low_ms`, the sum times its ratio there: `predictors.correction`), and the term is the
correction of the expected sum: in the same units as `predict_network`, so a target means
the same thing to both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from predictors.correction import piecewise


def expected_cost(probs: torch.Tensor, table: torch.Tensor, fixed: float = 0.0) -> torch.Tensor:
    """sum over layers l and candidates c of probs[..., l, c] * table[l, c], plus `fixed`.

    `probs` is (layers, candidates) -> a scalar, or (batch, layers, candidates) -> one
    cost per sample (e.g. per-sample Gumbel-softmax weights).
    """
    if probs.dim() not in (2, 3) or tuple(probs.shape[-2:]) != tuple(table.shape):
        raise ValueError(f"probs must be (layers, candidates) or (batch, layers, candidates) matching "
                         f"the cost table {tuple(table.shape)}; got {tuple(probs.shape)}")
    table = table.to(device=probs.device, dtype=probs.dtype)
    return (probs * table).sum(dim=(-2, -1)) + fixed


class CostTerm(nn.Module):
    """One cost (a device's latency, FLOPs or params) of a search space, ready for a torch loss.

    The table is a buffer, so `.to(device)` moves it with the supernet.
    """

    def __init__(self, table: np.ndarray, fixed: float, *, unit: str, name: str,
                 scale: float = 1.0, offset: float = 0.0, low_ms: float = 0.0):
        super().__init__()
        if not (np.isfinite(scale) and scale > 0 and np.isfinite(offset) and np.isfinite(low_ms)
                and low_ms >= 0):
            raise ValueError(f"the correction of {name} must have a finite scale > 0, a finite "
                             f"offset and a low_ms >= 0; got scale {scale}, offset {offset}, low_ms {low_ms}")
        self.scale = float(scale)
        self.offset = float(offset)
        self.low_ms = float(low_ms)
        table = np.asarray(table, dtype=np.float64)
        if table.ndim != 2 or not np.all(np.isfinite(table)) or float(table.min()) < 0:
            raise ValueError(f"a cost table must be a finite, non-negative (layers, candidates) array; "
                             f"got shape {table.shape} for {name}")
        if not np.isfinite(fixed) or fixed < 0:
            raise ValueError(f"the fixed cost must be finite and >= 0; got {fixed} for {name}")
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.table64 = table  # exact, for the cost of single archs
        self.fixed = float(fixed)
        self.unit = unit
        self.name = name

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected (corrected) cost of the candidate probabilities."""
        return self.corrected(expected_cost(probs, self.table, self.fixed))

    def corrected(self, total):
        """The predictor's network-level correction of a summed cost (float or tensor)."""
        return piecewise(total, self.scale, self.offset, self.low_ms)

    def of_arch(self, arch: list[int] | tuple[int, ...]) -> float:
        """The cost of one arch (one candidate per layer), corrected like `predict_network`."""
        t = self.table64
        total = float(t[np.arange(t.shape[0]), np.asarray(arch, dtype=np.int64)].sum()) + self.fixed
        return float(self.corrected(total))

    def bounds(self) -> tuple[float, float]:
        """(cheapest, dearest) cost over all archs of the space."""
        low = float(self.table64.min(axis=1).sum()) + self.fixed
        high = float(self.table64.max(axis=1).sum()) + self.fixed
        return float(self.corrected(low)), float(self.corrected(high))

    @classmethod
    def from_predictor(cls, predictor: Any, space: Any, name: str) -> "CostTerm":
        """From anything with `cost_table(space)`, `fixed_cost(space)` and `unit` (see predictors.load)."""
        table = np.asarray(predictor.cost_table(space), dtype=np.float64)
        want = (space.num_layers, space.num_candidates)
        if table.shape != want:
            raise ValueError(f"{name}: cost_table returned shape {table.shape}, expected {want}")
        scale, offset, low_ms = correction_parts(predictor, name)
        return cls(table, float(predictor.fixed_cost(space)), unit=predictor.unit, name=name,
                   scale=scale, offset=offset, low_ms=low_ms)


def correction_parts(predictor: Any, name: str) -> tuple[float, float, float]:
    """(scale, offset, low_ms) of the predictor's `correct(total)`; (1, 0, 0) when it has none.

    Its `correction_parts` where it has them, else read off `correct` at 0 and 1 as an affine
    map; either way checked at points on both sides of `low_ms`: a correction the term does not
    reproduce would make the search's costs differ from `predict_network`'s.
    """
    correct = getattr(predictor, "correct", None)
    if correct is None:
        return 1.0, 0.0, 0.0
    parts = getattr(predictor, "correction_parts", None)
    if parts is not None:
        scale, offset, low_ms = (float(v) for v in parts)
    else:
        offset = float(correct(0.0))
        scale, low_ms = float(correct(1.0)) - offset, 0.0
    for x in (0.5 * low_ms, low_ms, 10.0, 1000.0):
        if not np.isclose(float(correct(x)), float(piecewise(x, scale, offset, low_ms)), rtol=1e-6, atol=1e-9):
            raise ValueError(f"{name}: the network-level correction is not the (piecewise) affine map of "
                             "predictors.correction, so it cannot be part of a differentiable expected cost")
    return scale, offset, low_ms
