"""LUT: the measured latency of each op key of a device, with its spread, and its coverage
of a search space. Measured beats predicted: the GBDT answers only for keys not in here."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from latbench.ops import OpSpec, is_network_key


@dataclass(frozen=True)
class LUTEntry:
    """One measured op: median over rounds of each round's median, and how much it moved."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    round_spread: float | None  # (max - min) / median of the round medians; None for one round
    count: int  # timed runs over all rounds
    rounds: int = 1


@dataclass(frozen=True)
class Coverage:
    """Which ops of a space the LUT has measured."""

    space: str
    measured: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def total(self) -> int:
        return len(self.measured) + len(self.missing)

    @property
    def fraction(self) -> float:
        return len(self.measured) / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"space": self.space, "ops": self.total, "measured": len(self.measured),
                "missing": len(self.missing), "fraction": self.fraction,
                "missing_keys": list(self.missing)}

    def __str__(self) -> str:
        text = (f"{self.space}: {len(self.measured)} of {self.total} ops measured "
                f"({self.fraction:.0%})")
        if self.missing:
            text += f"; {len(self.missing)} predicted by the GBDT"
        return text


class LUT:
    """Op key -> `LUTEntry`. Build it with `from_rows` (store table rows or imported rows)."""

    def __init__(self, entries: dict[str, LUTEntry] | None = None):
        self.entries: dict[str, LUTEntry] = dict(entries or {})
        self._by_spec: dict[OpSpec, float] | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> "LUT":
        """Rows with ``key`` and ``median_ms`` (``p10_ms``, ``p90_ms``, ``round_spread``,
        ``count``, ``rounds`` optional); network keys are left out."""
        entries = {}
        for r in rows:
            if is_network_key(r["key"]):
                continue
            OpSpec.from_key(r["key"])  # a clear ValueError for a bad key, here and not later
            med = float(r["median_ms"])
            entries[r["key"]] = _checked(r["key"], LUTEntry(
                median_ms=med, p10_ms=float(r.get("p10_ms", med)), p90_ms=float(r.get("p90_ms", med)),
                round_spread=None if r.get("round_spread") is None else float(r["round_spread"]),
                count=int(r.get("count", 1)),
                rounds=int(r.get("rounds", 1))))
        return cls(entries)

    @classmethod
    def from_arrays(cls, specs: Sequence[OpSpec], latency_ms: Sequence[float]) -> "LUT":
        """A LUT of plain medians; repeated specs keep the median of their values."""
        specs, latency_ms = list(specs), list(latency_ms)
        if len(specs) != len(latency_ms):  # zip would drop the tail without a word
            raise ValueError(f"{len(specs)} specs but {len(latency_ms)} latencies; give one latency per spec")
        values: dict[str, list[float]] = {}
        for spec, lat in zip(specs, latency_ms):
            values.setdefault(spec.key, []).append(float(lat))
        return cls({k: _checked(k, LUTEntry(float(np.median(v)), float(np.min(v)), float(np.max(v)),
                                            _spread(v), len(v), len(v))) for k, v in values.items()})

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, item: str | OpSpec) -> bool:
        return (item.key if isinstance(item, OpSpec) else item) in self.entries

    def get(self, item: str | OpSpec) -> LUTEntry | None:
        return self.entries.get(item.key if isinstance(item, OpSpec) else item)

    def by_spec(self) -> dict[OpSpec, float]:
        """OpSpec -> median_ms, built once: lookups then hash specs instead of formatting keys."""
        if self._by_spec is None:
            self._by_spec = {OpSpec.from_key(k): e.median_ms for k, e in self.entries.items()}
        return self._by_spec

    def lookup(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """Measured median of each spec, NaN where the key was never measured."""
        table = self.by_spec()
        return np.array([table.get(s, np.nan) for s in specs], dtype=np.float64)

    def coverage(self, space) -> Coverage:
        ops = space.ops()
        measured = tuple(op.key for op in ops if op.key in self.entries)
        missing = tuple(op.key for op in ops if op.key not in self.entries)
        return Coverage(space.name, measured, missing)

    def to_dict(self) -> dict:
        return {"entries": {k: asdict(e) for k, e in sorted(self.entries.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "LUT":
        """Checked as it loads: a bad key or latency would otherwise fail, or be used, later."""
        entries = {}
        for key, values in data["entries"].items():
            OpSpec.from_key(key)  # ValueError naming the key
            entries[key] = _checked(key, LUTEntry(**values))
        return cls(entries)


def _checked(key: str, entry: LUTEntry) -> LUTEntry:
    """`entry`, if its latencies are finite and >= 0: a NaN median reads as "never measured"
    (the GBDT answers, yet `predict_sources` says lut), an infinite one is every prediction
    of a network with the op, and neither can be saved as JSON."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
               for v in (entry.median_ms, entry.p10_ms, entry.p90_ms)):
        raise ValueError(f"the latency of {key} is not a finite number >= 0 ms")
    return entry


def _spread(values: list[float]) -> float:
    med = float(np.median(values))
    return (max(values) - min(values)) / med if med > 0 else 0.0
