"""Measurement: the raw samples of one timed model and the statistics derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: IQR / median above which a measurement is called noisy, and grossly noisy
#: (torch.utils.benchmark's thresholds).
NOISY_IQR_RATIO = 0.10
GROSS_IQR_RATIO = 0.25
#: A key whose round medians differ by more than this share of their median did not reproduce
#: within the collection (the device drifted between batches).
UNSTABLE_ROUND_SPREAD = 0.10


def round_spread(medians_ms) -> float | None:
    """(max - min) / median of one key's round medians (each round a separate runner run):
    how far apart the rounds are. None for one round: it has no spread to show, and 0.0 would
    read as perfectly stable."""
    medians = np.asarray(medians_ms, dtype=np.float64)
    if medians.size < 2:
        return None
    median = float(np.median(medians))
    return float((medians.max() - medians.min()) / median) if median > 0 else 0.0


class _Summary:
    """What stored rows and reports need of any measurement: the summary and the noise flag."""

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    @property
    def is_noisy(self) -> bool:
        return self.relative_iqr > NOISY_IQR_RATIO

    def summary(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "mean_ms": self.mean_ms, "std_ms": self.std_ms, "count": self.count}


@dataclass
class Measurement(_Summary):
    """Samples of one model on one device in one round, in milliseconds."""

    key: str
    samples_ms: np.ndarray
    context: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples_ms = np.asarray(self.samples_ms, dtype=np.float64)
        if self.samples_ms.ndim != 1 or self.samples_ms.size == 0:
            raise ValueError(f"a Measurement needs a non-empty 1-D list of samples; got shape "
                             f"{self.samples_ms.shape} for {self.key}")
        bad = int((~np.isfinite(self.samples_ms)).sum())
        if bad:  # a NaN median is no number: the store would drop the row without a word
            raise ValueError(f"a Measurement needs finite samples; got {bad} NaN or inf of "
                             f"{self.samples_ms.size} for {self.key}")

    @property
    def count(self) -> int:
        return int(self.samples_ms.size)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def mean_ms(self) -> float:
        return float(self.samples_ms.mean())

    @property
    def std_ms(self) -> float:
        return float(self.samples_ms.std(ddof=1)) if self.count > 1 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p10_ms(self) -> float:
        return self.percentile_ms(10)

    @property
    def p90_ms(self) -> float:
        return self.percentile_ms(90)

    @property
    def iqr_ms(self) -> float:
        return self.percentile_ms(75) - self.percentile_ms(25)

    def __repr__(self) -> str:
        q1, q3 = self.percentile_ms(25), self.percentile_ms(75)
        text = (f"<Measurement {self.key}>\n  Median: {self.median_ms:.4g} ms, IQR: {q3 - q1:.3g} ms "
                f"({q1:.4g} to {q3:.4g}), {self.count} measurements")
        if self.relative_iqr > GROSS_IQR_RATIO:
            text += "\n  WARNING: grossly noisy (IQR > 25% of the median); check device load and heat"
        elif self.is_noisy:
            text += "\n  WARNING: noisy (IQR > 10% of the median)"
        return text


def _finite(value) -> float | None:
    """`value` as a float, or None when it is missing, NaN or infinite (C++ tools print "nan")."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


#: Standard normal quantiles for estimating percentiles from a mean and a std.
_NORMAL_Z = {10.0: -1.2816, 25.0: -0.6745, 75.0: 0.6745, 90.0: 1.2816}


@dataclass
class ReportedMeasurement(_Summary):
    """A measurement from a tool that prints statistics instead of runs (benchmark_model).

    `samples_ms` is empty. The median and percentiles are the tool's where it printed them,
    else interpolated between printed percentiles, else estimated from the std as if normal
    around the median (clipped to min/max), else interpolated between a printed percentile and
    the printed min or max (the 0th and 100th percentiles). With none of these a p10/p90 is the
    printed min/max, else the median, and a quartile is unknown: `iqr_ms` is then NaN, so the
    measurement is neither called noisy nor steady (`relative_iqr` is NaN). Whatever was printed,
    p10 <= median <= p90 and the IQR is never negative. `estimated` names every figure that was
    not printed.
    """

    key: str
    count: int
    mean_ms: float
    std_ms: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    estimated: tuple[str, ...] = ()
    context: dict = field(default_factory=dict)
    samples_ms: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def spread_known(self) -> bool:
        """Whether the IQR came from what the tool printed (else it is NaN)."""
        return not math.isnan(self.iqr_ms)

    @classmethod
    def from_summary(cls, key: str, summary: dict) -> "ReportedMeasurement":
        count, mean = int(summary.get("count", 0)), _finite(summary.get("mean_ms"))
        if count < 1 or mean is None:
            raise ValueError(f"a reported measurement needs count >= 1 and a finite mean; got {summary} "
                             f"for {key}")
        std_given = _finite(summary.get("std_ms"))  # a tool's "nan" or "inf" is a figure not printed
        std = float(std_given or 0.0)
        if summary.get("std_kind") == "population" and count > 1:
            std *= math.sqrt(count / (count - 1))  # sample std, as Measurement.std_ms
        printed = {float(q): v for q, raw in (summary.get("percentiles_ms") or {}).items()
                   if (v := _finite(raw)) is not None}
        if _finite(summary.get("median_ms")) is not None:
            printed.setdefault(50.0, float(summary["median_ms"]))
        lo = _finite(summary.get("min_ms"))
        hi = _finite(summary.get("max_ms"))
        ends = {**({0.0: float(lo)} if lo is not None else {}), **({100.0: float(hi)} if hi is not None else {})}
        estimated: list[str] = []

        def between(q: float, known: dict[float, float]) -> float | None:
            below = [k for k in known if k < q]
            above = [k for k in known if k > q]
            if not (below and above):
                return None
            a, b = max(below), min(above)
            return known[a] + (known[b] - known[a]) * (q - a) / (b - a)

        if 50.0 in printed:
            median = printed[50.0]
        else:
            estimated.append("median_ms")
            found = between(50.0, printed)
            median = float(mean) if found is None else found

        # a printed percentile on one side, the printed min or max (0th, 100th) on the other
        with_ends = {**ends, **printed, 50.0: median} if printed else {}

        def at(q: float, name: str) -> float | None:
            if q in printed:
                return printed[q]
            estimated.append(name)
            found = between(q, printed)
            if found is None and std_given is not None:  # a std: as if normal around the median
                found = median + _NORMAL_Z[q] * std
                found = min(max(found, ends.get(0.0, -math.inf)), ends.get(100.0, math.inf))
            return between(q, with_ends) if found is None else found

        def low(value: float | None, unknown: float) -> float:
            return min(unknown if value is None else value, median)

        def high(value: float | None, unknown: float) -> float:
            return max(unknown if value is None else value, median)

        p10 = low(at(10.0, "p10_ms"), ends.get(0.0, median))
        p90 = high(at(90.0, "p90_ms"), ends.get(100.0, median))
        q1, q3 = at(25.0, "q1_ms"), at(75.0, "q3_ms")
        iqr = math.nan if q1 is None or q3 is None else high(q3, median) - low(q1, median)
        return cls(key, count, float(mean), std, median, p10, p90, iqr, tuple(estimated))
