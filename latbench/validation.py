"""Settings checks written once as data; errors name the setting, its owner and what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A number in [low, high] (either end may be None) of type `kind` (int or float)."""

    kind: type
    low: float | None = None
    high: float | None = None

    def accepts(self, value: Any) -> bool:
        want = Integral if self.kind is int else Real
        if isinstance(value, bool) or not isinstance(value, want) or not math.isfinite(value):
            return False  # NaN passes every comparison below; infinity is no setting's value
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        noun = "an int" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{noun} >= {self.low}"
        if self.high is not None:
            return f"{noun} <= {self.high}"
        return noun


def check_params(owner: str, values: dict[str, Any], constraints: dict[str, Interval | tuple]) -> None:
    """Raise ValueError like "The 'runs' parameter of Protocol must be an int >= 1. Got 0."."""
    for name, rule in constraints.items():
        value = values[name]
        if isinstance(rule, Interval):
            ok, allowed = rule.accepts(value), rule.describe()
        else:
            ok, allowed = value in rule, "one of " + ", ".join(repr(r) for r in rule)
        if not ok:
            raise ValueError(f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r}.")
