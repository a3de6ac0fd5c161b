"""TFLite / LiteRT `benchmark_model`: its command line and every generation of its output.

benchmark_model reports statistics, not runs: after each phase (warm-up, then the
timed runs) one line such as

    count=50 first=14850 curr=13315 min=13105 max=15765 avg=13520.2 std=470

in microseconds (``std`` is the population deviation; some builds append
``p5= median= p95=``; a phase whose runs all took the same time prints
``count=50 curr=1000(all same)``). Then, by release:

    Average inference timings in us: Warmup: 76605.9, Init: 9933, no stats: 66767.6      (2018)
    Inference timings in us: Init: 855, First inference: 49060, Warmup (avg): 34825.1,
        Inference (avg): 33209.4                                                        (2019-)

with ``INFO: `` before every line since 2020. ``--enable_op_profiling=true`` adds
tables (``==== Run Order ====``, ``Top by Computation Time``, ``Summary by node type``).
A result therefore carries a ``summary``, not ``samples_ms``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from latbench.runners.parsing import (
    NUMBER, ParseError, Summary, key_values, numbered_lines, percentile_key, to_float)
from latbench.runners.base import BatchItem
from latbench.runners.script import ItemOutput, ScriptItem, run_line
from latbench.runners.tool import Option, ToolRunner

TOOL = "benchmark_model"

_RUNNING = re.compile(rf"^Running benchmark for at least (\d+) iterations and at least ({NUMBER}) seconds")
_STATS = re.compile(r"^count=")
_TIMINGS = re.compile(r"^(Average inference timings in us|Inference timings in us): (.*)$")
_TABLE_TITLE = re.compile(r"^=+ (.+?) =+$")
_PROFILE_SECTION = re.compile(r"^(Operator-wise Profiling Info for Regular Benchmark Runs|"
                              r"Profiling Info for Benchmark Initialization|Primary graph profile|"
                              r"Subgraph \(index: \d+\) profile|Delegate internal)\s*:?\s*$")
_STAT_KEYS = {"count", "first", "curr", "min", "max", "avg", "std", "p5", "median", "p95"}

#: column header (as printed, lower case, brackets removed) -> result field name
_COLUMNS = {
    "node type": "node_type", "start": "start_ms", "first": "first_ms", "avg ms": "avg_ms",
    "avg_ms": "avg_ms", "%": "percent", "cdf%": "cdf_percent", "mem kb": "mem_kb",
    "times called": "times_called", "name": "name", "count": "count", "avg %": "percent",
    "cdf %": "cdf_percent",
}


@dataclass
class PhaseStats:
    """One `count=` line: a phase's run statistics in microseconds."""

    count: int
    values_us: dict[str, float]
    all_same: bool = False

    def summary(self) -> Summary:
        v = self.values_us
        ms = {k: x / 1000.0 for k, x in v.items()}
        if self.all_same:
            curr = ms["curr"]
            return Summary(self.count, mean_ms=curr, std_ms=0.0, min_ms=curr, max_ms=curr,
                           median_ms=curr, first_ms=curr, last_ms=curr)
        pct = {percentile_key(q): ms[k] for q, k in ((5, "p5"), (50, "median"), (95, "p95")) if k in ms}
        return Summary(self.count, mean_ms=ms.get("avg"), std_ms=ms.get("std"), min_ms=ms.get("min"),
                       max_ms=ms.get("max"), median_ms=ms.get("median"), percentiles_ms=pct,
                       first_ms=ms.get("first"), last_ms=ms.get("curr"))


@dataclass
class BenchmarkModelOutput:
    """Everything read from one benchmark_model run."""

    phases: list[PhaseStats] = field(default_factory=list)
    timings_us: dict[str, float] = field(default_factory=dict)
    init_ms: float | None = None
    tables: dict[str, list[dict]] = field(default_factory=dict)  # regular runs' op profile

    @property
    def timed(self) -> PhaseStats | None:
        """The timed runs' statistics: the phase after warm-up."""
        return self.phases[1] if len(self.phases) >= 2 else None

    def record(self) -> dict:
        timed = self.timed
        if timed is None:
            raise ValueError("no timed runs")
        extra: dict = {}
        if self.phases:
            warm = self.phases[0].summary()
            extra["warmup"] = warm.to_dict()
        names = {"Init": "init_ms", "First inference": "first_inference_ms",
                 "Warmup (avg)": "warmup_mean_ms", "Warmup": "warmup_mean_ms"}
        for label, value in self.timings_us.items():
            extra[names.get(label, "inference_mean_ms")] = value / 1000.0
        if "init_ms" not in extra and self.init_ms is not None:
            extra["init_ms"] = self.init_ms
        if self.tables:
            extra["op_profile"] = self.tables
        return {"ok": True, "summary": timed.summary().to_dict(), "extra": extra}


def parse_stats_line(text: str) -> PhaseStats:
    """``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..[ p5=.. median=.. p95=..]``."""
    all_same = "(all same)" in text
    pairs = key_values(text.replace("(all same)", " "))
    unknown = set(pairs) - _STAT_KEYS
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    count = pairs.get("count", "")
    if not count.isdigit():
        raise ValueError("count is not a whole number")
    values = {k: to_float(v) for k, v in pairs.items() if k != "count"}
    n = int(count)
    # a single run, or runs that all took the same time, print only "count=N curr=X"
    all_same = all_same or ("curr" in values and not {"first", "min", "max", "avg", "std"} & set(values))
    if n > 0:
        needed = {"curr"} if all_same else {"first", "curr", "min", "max", "avg", "std"}
        missing = needed - set(values)
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
    return PhaseStats(n, values, all_same)


def _parse_timings(rest: str) -> dict[str, float]:
    out = {}
    for part in rest.split(","):
        label, sep, value = part.strip().rpartition(":")
        if not sep or not label.strip():
            raise ValueError(f"{part.strip()!r} is not 'name: value'")
        out[label.strip()] = to_float(value)
    return out


def _split_row(text: str) -> list[str]:
    """A table row: each field follows a tab and is right-aligned (CSV tables use ', ');
    the last field, the node name, may be empty."""
    if "\t" in text:
        parts = text.split("\t")
        if not parts[0].strip():
            parts = parts[1:]
        return [f.strip() for f in parts]
    return [f.strip() for f in text.split(",")]


def _row_value(column: str, text: str) -> object:
    if column in ("node_type", "name"):
        return text
    if column in ("times_called", "count"):
        if not text.lstrip("-").isdigit():
            raise ValueError(f"{column} {text!r} is not a whole number")
        return int(text)
    if column not in _COLUMNS.values():  # a column latbench does not know: a number if it is one
        try:
            return to_float(text.rstrip("%"))
        except ValueError:
            return text
    return to_float(text.rstrip("%"))


def parse_output(text: str) -> BenchmarkModelOutput:
    """Read benchmark_model's stdout+stderr; ParseError names the first line it cannot read."""
    out = BenchmarkModelOutput()
    section = ""  # profile section we are in ("" before any)
    table: str | None = None
    columns: list[str] | None = None
    for no, line in numbered_lines(text):
        stripped = line.strip()
        try:
            if table is not None:
                if not stripped:
                    table, columns = None, None
                    continue
                if columns is None:
                    names = re.findall(r"\[([^\]]+)\]", line) or [c.strip() for c in line.split(",")]
                    # a column of a newer release keeps its own name rather than failing the model
                    columns = [_COLUMNS.get(n.strip().lower(), re.sub(r"\W+", "_", n.strip().lower()).strip("_"))
                               for n in names]
                    continue
                fields = _split_row(line)
                if len(fields) != len(columns):
                    raise ValueError(f"{len(fields)} fields where the header has {len(columns)}")
                row = {c: _row_value(c, f) for c, f in zip(columns, fields)}
                if section.startswith("Operator-wise"):
                    out.tables.setdefault(table, []).append(row)
                continue
            if _RUNNING.match(stripped):  # a phase starts; its count= line follows
                continue
            if _STATS.match(stripped):
                out.phases.append(parse_stats_line(stripped))
                continue
            found = _TIMINGS.match(stripped)
            if found:
                out.timings_us.update(_parse_timings(found.group(2)))
                continue
            found = _TABLE_TITLE.match(stripped)
            if found:
                table, columns = found.group(1).strip(), None
                continue
            found = _PROFILE_SECTION.match(stripped)
            if found:
                if not found.group(1).startswith(("Primary", "Subgraph")):
                    section = found.group(1)
                continue
            if stripped.startswith("Initialized session in "):
                value = stripped[len("Initialized session in "):].rstrip(".")
                if not value.endswith("ms"):
                    raise ValueError("the time has no 'ms' unit")
                out.init_ms = to_float(value[:-2])
                continue
        except ValueError as exc:
            raise ParseError(TOOL, no, line, str(exc)) from None
    return out


def parse_result(text: str) -> dict:
    """A result record from one successful run's output (ParseError when there is none)."""
    parsed = parse_output(text)
    lines = text.splitlines()
    if parsed.timed is None:
        reason = ("it stopped after the warm-up" if parsed.phases else "no 'count=' statistics line")
        last = next((ln for ln in reversed(lines) if ln.strip()), "")
        raise ParseError(TOOL, len(lines), last, f"no timed runs: {reason}")
    if parsed.timed.count == 0:
        raise ParseError(TOOL, len(lines), lines[-1] if lines else "", "the timed phase has count=0")
    return parsed.record()


#: runtime_options that ask benchmark_model for a delegate -> the name its log lines give it
DELEGATE_OPTIONS = {"gpu": "GPU", "nnapi": "NNAPI"}
_APPLIED = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be "
                      r"(completely|partially) executed by the delegate(?: w/ (\d+) delegate kernels)?")


def delegation(text: str, name: str) -> str | None:
    """How much of the model the `name` delegate runs, from benchmark_model's log: ``full``,
    ``partial (N kernels)``, or None when it runs none of it. A delegate it cannot create (no GPU
    driver, an old NNAPI) is skipped with a WARN line, and the model is timed on the CPU with
    exit code 0: only the 'Explicitly applied' line says the delegate ran."""
    for line in text.splitlines():
        found = _APPLIED.search(line)
        if found and found.group(1) == name:
            return "full" if found.group(2) == "completely" else f"partial ({found.group(3) or '?'} kernels)"
    return None


def _delegate_failure(text: str, option: str, name: str) -> str:
    """Why the model ran on the CPU although `option` asked for the `name` delegate."""
    said = next((ln.strip() for ln in text.splitlines()
                 if name in ln and ("WARN" in ln or "ERROR" in ln or "will not be executed" in ln)), "")
    return (f"the {name} delegate was asked for (runtime_options {option}: true) but ran none of the "
            f"model, so benchmark_model timed it on the CPU"
            + (f" ({said[:200]})" if said else " (no 'Explicitly applied' line)")
            + f"; check that the device supports it, or set {option}: false to measure the CPU")


class BenchmarkModelRunner(ToolRunner):
    """Times .tflite models with benchmark_model: on phones over adb, on boards over SSH."""

    name = "benchmark_model"
    applies: frozenset[str] = frozenset()  # its own stop rule has no run cap (see command)
    tool = TOOL
    runtime = "litert"
    formats = ("tflite",)
    options = {
        "xnnpack": Option((bool,), "true/false: --use_xnnpack"),
        "gpu": Option((bool,), "true/false: --use_gpu (GPU delegate)"),
        "nnapi": Option((bool,), "true/false: --use_nnapi"),
        "allow_fp16": Option((bool,), "true/false: --allow_fp16"),
        "op_profiling": Option((bool,), "true/false: --enable_op_profiling (per-op tables)"),
        "max_secs": Option((int, float), "seconds: --max_secs, stop timing a model after this long"),
        "run_delay_s": Option((int, float), "seconds: --run_delay between runs"),
    }
    install_hint = ("push it: adb push benchmark_model /data/local/tmp/ && adb shell chmod +x "
                    "/data/local/tmp/benchmark_model (from the TFLite/LiteRT releases), or set "
                    "runtime_options: {binary: ...} or {binary_local: ...} in the profile")

    _FLAGS = {"xnnpack": "use_xnnpack", "gpu": "use_gpu", "nnapi": "use_nnapi",
              "allow_fp16": "allow_fp16", "op_profiling": "enable_op_profiling",
              "max_secs": "max_secs", "run_delay_s": "run_delay"}

    def default_binaries(self) -> list[str]:
        return ["/data/local/tmp/benchmark_model", f"{self.transport.workdir}/bin/benchmark_model",
                "benchmark_model"]

    def command(self, model_path: str) -> list[str]:
        """benchmark_model's arguments for one model, from the profile.

        warm-up: at least warmup_runs runs and warmup_s seconds; timed: at least runs runs and
        min_time_s seconds (its own rule, the same as latbench's). It has no run cap, so
        protocol.max_runs and rel_ci do not apply; the count it ran is stored.
        """
        p = self.profile.protocol
        args = [self.binary(), f"--graph={model_path}", f"--num_threads={self.profile.threads}",
                f"--warmup_runs={p.warmup_runs}", f"--warmup_min_secs={p.warmup_s:g}",
                f"--num_runs={p.runs}", f"--min_secs={p.min_time_s:g}"]
        for key, flag in self._FLAGS.items():
            if key in self.profile.runtime_options:
                value = self.profile.runtime_options[key]
                text = str(value).lower() if isinstance(value, bool) else f"{value:g}"
                args.append(f"--{flag}={text}")
        return args + list(self.opt("extra_args", []))

    def item(self, item: BatchItem, model_path: str, limit_s: float) -> ScriptItem:
        return ScriptItem(item.id, [run_line(self.command(model_path), limit_s, self.cpu_prefix())])

    def parse_item(self, output: ItemOutput) -> dict:
        record = parse_result(output.text)
        for option, name in DELEGATE_OPTIONS.items():
            if self.profile.runtime_options.get(option):
                applied = delegation(output.text, name)
                if applied is None:  # a CPU time stored as the delegate's would mislead every fit
                    return {"ok": False, "error": _delegate_failure(output.text, option, name)}
                record["extra"][f"{option}_delegated"] = applied
        return record
