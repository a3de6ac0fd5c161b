"""How a model is timed on a device: warm-up, timed runs, rounds and batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from latbench.validation import Interval, check_params


@dataclass(frozen=True)
class Protocol:
    """Timing protocol. Each model: warm up for at least `warmup_runs` runs *and* `warmup_s`
    seconds, then time single runs: at least `runs` runs *and* `min_time_s` seconds; then, when
    `rel_ci` > 0, on until the median's relative 95% CI half-width is <= `rel_ci` or `max_time_s`
    has passed; never more than `max_runs` runs. Every op is measured `rounds` times, each round in a fresh shuffled
    order, `batch_size` models per runner process.

    Only the timing fields define a measurement's settings; `rounds` and `batch_size`
    change how much is measured and in which order, not what a number means.
    """

    warmup_runs: int = 10
    warmup_s: float = 0.1
    runs: int = 30
    min_time_s: float = 0.3
    max_runs: int = 5000
    max_time_s: float = 2.0
    rel_ci: float = 0.0
    rounds: int = 3
    batch_size: int = 40
    seed: int = 0

    _constraints = {
        "warmup_runs": Interval(int, 0),
        "warmup_s": Interval(float, 0),
        "runs": Interval(int, 1),
        "min_time_s": Interval(float, 0),
        "max_runs": Interval(int, 1),
        "max_time_s": Interval(float, 0),
        "rel_ci": Interval(float, 0, 1),
        "rounds": Interval(int, 1),
        "batch_size": Interval(int, 1),
        "seed": Interval(int, 0),
    }

    def __post_init__(self) -> None:
        check_params("Protocol", asdict(self), self._constraints)
        if self.max_runs < self.runs:
            raise ValueError(f"The 'max_runs' parameter of Protocol must be >= runs ({self.runs}). "
                             f"Got {self.max_runs}.")
        if self.rel_ci > 0 and self.max_time_s <= self.min_time_s:  # the CI stop could never act
            raise ValueError(f"The 'max_time_s' parameter of Protocol must be > min_time_s "
                             f"({self.min_time_s:g}) when rel_ci > 0. Got {self.max_time_s:g}.")

    def timing(self) -> dict:
        """The fields that define what a measured number means (stored as settings)."""
        return {k: getattr(self, k) for k in ("warmup_runs", "warmup_s", "runs", "min_time_s", "max_runs",
                                            "max_time_s", "rel_ci")}

    def to_dict(self) -> dict:
        return asdict(self)


def describe_timing(timing: dict, runner: str | None = None) -> str:
    """A stored protocol (`Protocol.timing()`) in words, every field that changes a table:
    "warm-up >= 10 runs and 0.01 s; timed >= 20 runs and 0.025 s (max 5000), then on until
    the round's median is within +-0.5% (95% CI of its samples) or 0.5 s". That interval is one
    round's: drift between rounds is what `round_spread` shows. A `runner` claims only the
    limits it applies (`Runner.applies`): a tool's words say the CI stop was not applied, and
    give no run cap where it has none, so a number is not trusted for what nobody measured."""
    from latbench.runners.base import runner_applies

    def g(key: str) -> str:  # a table stored by an older latbench may lack a field
        value = timing.get(key)
        return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    applies = {"max_runs", "rel_ci"} if runner is None else runner_applies(runner)
    text = (f"warm-up >= {g('warmup_runs')} runs and {g('warmup_s')} s; timed >= {g('runs')} runs and "
            f"{g('min_time_s')} s" + (f" (max {g('max_runs')})" if "max_runs" in applies else ""))
    if timing.get("rel_ci") and "rel_ci" not in applies:
        text += f"; rel_ci and max_time_s not applied (the {runner} runner has no such stop rule)"
    elif timing.get("rel_ci"):
        text += (f", then on until the round's median is within +-{100 * timing['rel_ci']:g}% "
                 f"(95% CI of its samples) or {g('max_time_s')} s")
    return text


def describe_options(options: dict) -> str:
    """Runtime options as `key=value` words ("" for none): a table's XNNPACK on or off."""
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(options.items()))
