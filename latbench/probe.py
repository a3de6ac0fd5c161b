"""The steadiness probe: one op timed in a few separate runner runs, as a collection's rounds
are, to tell before a collection whether the device holds its speed.

A device that changes speed from one run to the next (a shared VM's neighbours, a phone
throttling or parking cores, a board on the powersave governor) gives rounds that disagree,
and a collection only says so when it is over. The probe is the same measurement, shortened:
the same runner, transport and protocol, `rounds` runs of one fbnet block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from latbench.measurement import UNSTABLE_ROUND_SPREAD, round_spread
from latbench.runners.base import BatchItem, Runner

#: The probe's op: the fbnet-cifar block k5 e3 at 16x16, 32->32, at the median latency of the
#: space's blocks (on this host, 0.031 ms against a median of 0.029 ms and quartiles 0.019 and
#: 0.054), so it times like the ops a collection measures.
PROBE_LAYER, PROBE_CANDIDATE = 6, 6
PROBE_ROUNDS = 5
#: Pause between the runs: the probe then spans a few seconds, not one (a shared host's speed
#: changes from one second to the next; slower drift shows only in a collection's rounds).
PROBE_GAP_S = 0.5


@dataclass
class ProbeResult:
    key: str
    rounds: list  # one Measurement (or a tool's ReportedMeasurement) per runner run
    wall_s: float

    @property
    def medians_ms(self) -> list[float]:
        return [m.median_ms for m in self.rounds]

    @property
    def round_spread(self) -> float:
        return round_spread(self.medians_ms) or 0.0

    @property
    def relative_iqr(self) -> float:
        """Median of the rounds' IQR / median: the noise within a run."""
        return float(np.median([m.relative_iqr for m in self.rounds]))

    @property
    def steady(self) -> bool:
        return self.round_spread <= UNSTABLE_ROUND_SPREAD

    @property
    def estimated(self) -> list[str]:
        """The figures a tool did not print, estimated from what it did (`ReportedMeasurement`)."""
        return sorted({name for m in self.rounds for name in getattr(m, "estimated", ())})


class ProbeError(Exception):
    """The probe op did not time on the device (the message says why)."""


def probe_op():
    from latbench.spaces import get_space

    return get_space("fbnet-cifar").candidate_op(PROBE_LAYER, PROBE_CANDIDATE)


def run_probe(runner: Runner, model_path, key: str, rounds: int = PROBE_ROUNDS,
              gap_s: float | None = None) -> ProbeResult:
    """Time the model at `model_path` in `rounds` separate runs of `runner`, `gap_s` apart
    (default `PROBE_GAP_S`)."""
    from latbench.collect import measurement_from_result

    if rounds < 2:
        raise ValueError(f"rounds must be >= 2 (one run has no spread); got {rounds}")
    measured = []
    start = time.perf_counter()
    for i in range(rounds):
        if i:
            time.sleep(PROBE_GAP_S if gap_s is None else gap_s)
        out = runner.run_batch([BatchItem(f"probe-{i}", model_path)])
        result = out.results.get(f"probe-{i}")
        if not result or not result.get("ok"):
            why = (result or {}).get("error") or out.error or "the runner printed no result"
            raise ProbeError(f"run {i + 1} of {rounds}: {why}")
        try:
            measured.append(measurement_from_result(key, result))
        except (KeyError, ValueError) as exc:  # as a collection stores it: an unreadable result
            raise ProbeError(f"run {i + 1} of {rounds}: unreadable result: {exc}") from None
    return ProbeResult(key, measured, time.perf_counter() - start)
