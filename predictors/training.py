"""From measurement rows (a store table or imported rows) to what a predictor is fitted on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from latbench.errors import LatbenchError
from latbench.ops import Network, OpSpec, is_network_key
from predictors.lut import LUT


@dataclass
class TrainingData:
    specs: list[OpSpec]
    latency_ms: np.ndarray
    lut: LUT
    networks: list[Network] = field(default_factory=list)
    network_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was left out


def from_rows(rows: Iterable[dict]) -> TrainingData:
    """Split rows (``key``, ``median_ms``, spreads optional) into ops and whole networks.

    Keys this latbench cannot read (an unknown space, a bad arch) are left out and listed
    in `skipped` rather than failing the whole fit.
    """
    from latbench.spaces import get_space

    rows = list(rows)
    op_rows, specs, latency = [], [], []
    networks, network_ms = [], []
    skipped: dict[str, str] = {}
    spaces: dict[str, object] = {}
    for row in rows:
        key = row["key"]
        if is_network_key(key):
            try:
                space_name, arch = Network.parse_key(key)
                if space_name not in spaces:
                    spaces[space_name] = get_space(space_name)
                networks.append(spaces[space_name].network(arch))
                network_ms.append(float(row["median_ms"]))
            except (ValueError, LatbenchError) as exc:
                skipped[key] = str(exc)
            continue
        try:
            specs.append(OpSpec.from_key(key))
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        op_rows.append(row)
        latency.append(float(row["median_ms"]))
    return TrainingData(specs, np.array(latency, dtype=np.float64), LUT.from_rows(op_rows),
                        networks, np.array(network_ms, dtype=np.float64), skipped)
