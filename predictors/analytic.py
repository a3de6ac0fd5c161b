"""Analytic costs (`predictors.load("flops")`, ``"params"``): no device, no fitting."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from latbench.ops import OpSpec
from predictors.costmodel import CostModel
from predictors.features import as_spec_matrix, quantities

METRICS = {"flops": "flops", "params": "params"}


class AnalyticCost(CostModel):
    """FLOPs (2 x multiply-accumulates) or trainable parameters of each op, as `OpSpec` counts them."""

    def __init__(self, metric: str = "flops"):
        if metric not in METRICS:
            raise ValueError(f"The 'metric' parameter of AnalyticCost must be one of "
                             f"{', '.join(repr(m) for m in METRICS)}. Got {metric!r}.")
        self.metric = metric
        self.unit = METRICS[metric]

    def __repr__(self) -> str:
        return f"AnalyticCost({self.metric!r})"

    def predict_ops(self, specs: Sequence[OpSpec]) -> np.ndarray:
        m = as_spec_matrix(specs)
        if len(m) == 0:
            return np.zeros(0)
        return quantities(m)[self.metric].astype(np.float64)
