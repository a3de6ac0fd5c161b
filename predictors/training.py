"""From measurement rows (a store table or imported rows) to what a predictor is fitted on."""

from __future__ import annotations

import math
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

    Keys this latbench cannot read (an unknown space, a bad arch), and networks measured at
    0 ms, are left out and listed in `skipped` rather than failing the whole fit.
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
                network = spaces[space_name].network(arch)
            except (ValueError, LatbenchError) as exc:
                skipped[key] = str(exc)
                continue
            why = _unusable_network_ms(float(row["median_ms"]))
            if why:
                skipped[key] = why
                continue
            networks.append(network)
            network_ms.append(float(row["median_ms"]))
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


def _unusable_network_ms(median_ms: float) -> str | None:
    """Why a network's measured latency cannot fit the network correction, or None. An import
    takes 0 ms (an identity op may take it), but no whole network runs in no time: its
    ratio to the op sum is undefined, and the correction's fit refused the whole table."""
    if math.isfinite(median_ms) and median_ms > 0:
        return None
    return (f"measured at {median_ms:g} ms, and a whole network takes some time (a failed "
            "measurement?): left out of the network correction")
