"""predictors: per-device latency predictors (LUT + GBDT + network correction) for NAS code.

    import predictors
    cost = predictors.load("latbench:local")      # or "flops", "params", or a folder's path
    cost.predict_ops(specs)                       # np.ndarray, in cost.unit
    cost.predict_network(space, arch)             # float, network-level correction included
    cost.cost_table(space), cost.fixed_cost(space)

Importing this package needs neither torch nor onnxruntime; LightGBM and SciPy are
imported only when a model is fitted or read.
"""

from __future__ import annotations

from predictors._estimator import NotFittedError
from predictors.analytic import AnalyticCost
from predictors.artifact import ArtifactError
from predictors.correction import NetworkCorrection
from predictors.costmodel import CostModel
from predictors.gbdt import GBDTPredictor
from predictors.latency import LatencyPredictor
from predictors.lut import LUT, Coverage, LUTEntry
from predictors.physics import LogLinearBase, PowerLawBase

__all__ = ["load", "AnalyticCost", "ArtifactError", "CostModel", "Coverage", "GBDTPredictor",
           "LatencyPredictor", "LogLinearBase", "LUT", "LUTEntry", "NetworkCorrection",
           "NotFittedError", "PowerLawBase"]

PREFIX = "latbench:"


def load(cost_spec) -> CostModel:
    """The cost model a cost spec names.

    ``"latbench:DEVICE"``: the predictor `latbench fit-predictor --device DEVICE` saved
    (milliseconds) in ``$LATBENCH_HOME/predictors/DEVICE``; a path (`pathlib.Path`, or a
    string with a ``/``): a predictor folder copied anywhere; ``"flops"``, ``"params"``:
    analytic counts.
    """
    import os

    from latbench.errors import UsageError

    if isinstance(cost_spec, os.PathLike) or (isinstance(cost_spec, str) and "/" in cost_spec
                                              and not cost_spec.startswith(PREFIX)):
        from pathlib import Path

        from predictors import artifact

        return artifact.load(Path(cost_spec).expanduser())  # no device: a path names none to fit
    if not isinstance(cost_spec, str):
        raise UsageError(f"a cost spec is a string or a path; got {type(cost_spec).__name__}",
                         "use latbench:<device>, flops, params or a predictor folder's path")
    if cost_spec in ("flops", "params"):
        return AnalyticCost(cost_spec)
    if cost_spec.startswith(PREFIX) and len(cost_spec) > len(PREFIX):
        from predictors import artifact

        device = cost_spec[len(PREFIX):]
        return artifact.load(artifact.predictor_dir(device), device)
    raise UsageError(f"unknown cost spec {cost_spec!r}",
                     "use latbench:<device> (e.g. latbench:local), flops or params")
