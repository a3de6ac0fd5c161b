"""Measurement: the raw samples of one timed model and the statistics derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: IQR / median above which a measurement is called noisy, and grossly noisy
#: (torch.utils.benchmark's thresholds).
NOISY_IQR_RATIO = 0.10
GROSS_IQR_RATIO = 0.25


@dataclass
class Measurement:
    """Samples of one model on one device in one round, in milliseconds."""

    key: str
    samples_ms: np.ndarray
    context: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples_ms = np.asarray(self.samples_ms, dtype=np.float64)
        if self.samples_ms.ndim != 1 or self.samples_ms.size == 0:
            raise ValueError(f"a Measurement needs a non-empty 1-D list of samples; got shape "
                             f"{self.samples_ms.shape} for {self.key}")

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

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    @property
    def is_noisy(self) -> bool:
        return self.relative_iqr > NOISY_IQR_RATIO

    def summary(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "mean_ms": self.mean_ms, "std_ms": self.std_ms, "count": self.count}

    def __repr__(self) -> str:
        q1, q3 = self.percentile_ms(25), self.percentile_ms(75)
        text = (f"<Measurement {self.key}>\n  Median: {self.median_ms:.4g} ms, IQR: {q3 - q1:.3g} ms "
                f"({q1:.4g} to {q3:.4g}), {self.count} measurements")
        if self.relative_iqr > GROSS_IQR_RATIO:
            text += "\n  WARNING: grossly noisy (IQR > 25% of the median); check device load and heat"
        elif self.is_noisy:
            text += "\n  WARNING: noisy (IQR > 10% of the median)"
        return text
