"""ONNX Runtime's `onnxruntime_perf_test`: its command line and every generation of its output.

    onnxruntime_perf_test [options] model_path [result_file]

Given a result file it appends one line per timed run,
``model_name,seconds,peak_working_set,cpu_usage,run_index``: the raw samples, so a
result here carries ``samples_ms``. Its stdout summary changed wording over time:

    Total time cost:0.51 / Total iterations:100 / Average time cost:5.1 ms          (2019)
    Session creation time cost: 0.03 s / Total inference time cost: 0.51 s /
        Total inference requests: 100 / Average inference time cost: 5.1 ms /
        Total inference run time: 0.52 s / Avg CPU usage: 98 % / Peak working set size: ... bytes
    + First inference time cost: 7 ms, Average inference time cost total: 5.1 ms,
        Number of inferences per second: 196                                            (2023-)
    Min Latency: 0.0049 s / Max Latency / P50 / P90 / P95 / P99 / P999 Latency: ... s  (with -s)

Each is read; the summary is kept beside the samples, and stands in for them when the
result file is missing.
"""

from __future__ import annotations

import math
import re
import shlex

from latbench.runners.parsing import (
    ParseError, Summary, apply_protocol, numbered_lines, to_float)
from latbench.runners.base import BatchItem
from latbench.runners.script import ItemOutput, ScriptItem, run_line
from latbench.runners.tool import Option, ToolRunner

TOOL = "onnxruntime_perf_test"

#: label -> (field, unit the value is printed in); longest labels first so that
#: "Average inference time cost total" is not read as "Average inference time cost".
_LABELS = {
    "Average inference time cost submission": ("submission_mean", "ms"),
    "Average inference time cost total": ("mean", "ms"),
    "Average inference time cost": ("mean", "ms"),
    "Average time cost": ("mean", "ms"),
    "Session creation time cost": ("session", "s"),
    "First inference time cost": ("first", "ms"),
    "Total inference time cost": ("total", "s"),
    "Total time cost": ("total", "s"),
    "Total inference requests": ("count", ""),
    "Total iterations": ("count", ""),
    "Total inference run time": ("run_time", "s"),
    "Number of inferences per second": ("per_second", ""),
    "Avg CPU usage": ("cpu_percent", "%"),
    "Peak working set size": ("peak_bytes", "bytes"),
    "Runs": ("runs", ""),
    "Min Latency": ("min", "s"),
    "Max Latency": ("max", "s"),
    "P50 Latency": ("p50", "s"),
    "P90 Latency": ("p90", "s"),
    "P95 Latency": ("p95", "s"),
    "P99 Latency": ("p99", "s"),
    "P999 Latency": ("p99.9", "s"),
}
_LABEL_RE = re.compile(r"^\s*(" + "|".join(re.escape(k) for k in _LABELS) + r")\s*:\s*(.*?)\s*$")
_UNITS = {"s": 1000.0, "sec": 1000.0, "ms": 1.0, "%": 1.0, "bytes": 1.0, "": 1.0}


def _value(text: str, unit: str) -> float:
    """``"5.1 ms"`` -> 5.1 (milliseconds when `unit` is a time); checks the printed unit."""
    number, _, printed = text.partition(" ")
    printed = printed.strip()
    if printed and printed not in _UNITS:
        raise ValueError(f"unknown unit {printed!r}")
    if printed and unit in ("s", "ms") and printed not in ("s", "sec", "ms"):
        raise ValueError(f"a time in {printed!r}")
    value = to_float(number)
    scale = _UNITS[printed or unit] if unit in ("s", "ms") else 1.0
    return value * scale


def parse_stdout(text: str) -> dict[str, float]:
    """The summary lines of perf_test's stdout as {field: value}, times in ms; last one wins."""
    found: dict[str, float] = {}
    for no, line in numbered_lines(text):
        match = _LABEL_RE.match(line)
        if not match:
            continue
        name, unit = _LABELS[match.group(1)]
        try:
            found[name] = _value(match.group(2), unit)
        except ValueError as exc:
            raise ParseError(TOOL, no, line, str(exc)) from None
    return found


def parse_result_file(text: str) -> list[float]:
    """Per-run seconds from the result file, in run order, as milliseconds."""
    samples: list[tuple[int, float]] = []
    for no, line in enumerate(text.splitlines(), 1):
        if "," not in line:
            continue  # blank lines and the -s statistics the tool appends
        parts = line.rsplit(",", 4)
        try:
            if len(parts) != 5:
                raise ValueError("not model,seconds,peak_working_set,cpu_usage,run")
            seconds = to_float(parts[1])
            to_float(parts[2]), to_float(parts[3])
            if not parts[4].strip().isdigit():
                raise ValueError(f"run index {parts[4]!r} is not a whole number")
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"run time {parts[1]!r}")
        except ValueError as exc:
            raise ParseError(f"{TOOL} result file", no, line, str(exc)) from None
        samples.append((int(parts[4]), seconds * 1000.0))
    indices = [i for i, _ in samples]
    if indices != list(range(len(indices))):
        raise ParseError(f"{TOOL} result file", len(text.splitlines()), "",
                         "run indices are not 0, 1, 2, ... (two runs appended to one file?)")
    return [ms for _, ms in samples]


def summary_from_stdout(found: dict[str, float]) -> Summary | None:
    count = found.get("count", found.get("runs"))
    if count is None:
        return None
    pct = {k[1:]: v for k, v in found.items() if k.startswith("p") and k[1:].replace(".", "").isdigit()}
    return Summary(int(count), mean_ms=found.get("mean"), min_ms=found.get("min"), max_ms=found.get("max"),
                   median_ms=found.get("p50"), percentiles_ms=pct)


class OrtPerfTestRunner(ToolRunner):
    """Times .onnx models with onnxruntime_perf_test (random inputs, -I), one process per model."""

    name = "onnxruntime_perf_test"
    applies = frozenset({"max_runs"})  # parse_result keeps at most max_runs of the -r/-t runs
    tool = TOOL
    runtime = "onnxruntime"
    formats = ("onnx",)
    options = {
        "provider": Option((str,), "execution provider for -e: cpu, xnnpack, nnapi, cuda, tensorrt, ..."),
        "spinning": Option((bool,), "false: -D, no spinning in the intra-op thread pool"),
        "optimization_level": Option((int,), "-o: 0, 1, 2, 99"),
    }

    def default_binaries(self) -> list[str]:
        return [f"{self.transport.workdir}/bin/{TOOL}", TOOL, f"/data/local/tmp/{TOOL}"]

    def version_probe(self) -> list[str]:
        return ['for f in "$(dirname "$LB_BIN")"/libonnxruntime.so.*; do',
                '  [ -e "$f" ] && echo "$LB_M probe ${f##*/}"', "done"]

    def version_from_probe(self, probe: list[str]) -> str | None:
        for line in probe:
            found = re.search(r"libonnxruntime\.so\.(\d+\.\d+\.\d+)", line)
            if found:
                return found.group(1)
        return None

    def duration_s(self) -> int:
        """-t takes whole seconds: enough for the warm-up and the timed part together."""
        p = self.profile.protocol
        return max(1, math.ceil(p.warmup_s + p.min_time_s))

    def needed_runs(self) -> int:
        """Runs after perf_test's own single warm-up run that the protocol needs at least."""
        p = self.profile.protocol
        return max(0, p.warmup_runs - 1) + p.runs

    def command(self, model_path: str, result_path: str, mode: list[str]) -> list[str]:
        args = [self.binary(), "-I", "-s", "-e", str(self.opt("provider", "cpu")),
                "-x", str(self.profile.threads), "-y", "1", *mode]
        if self.opt("spinning") is False:
            args.append("-D")
        if "optimization_level" in self.profile.runtime_options:
            args += ["-o", str(self.opt("optimization_level"))]
        return args + list(self.opt("extra_args", [])) + [model_path, result_path]

    def prelude(self) -> list[str]:
        return [f"mkdir -p {shlex.quote(self.transport.workdir + '/results')}"]

    def item(self, item: BatchItem, model_path: str, limit_s: float) -> ScriptItem:
        """Run for the protocol's time; when that gave too few runs (a slow model), run again
        for a fixed count."""
        res = f"{self.transport.workdir}/results/{item.id}.csv"
        need = self.needed_runs()
        qres = shlex.quote(res)
        first = run_line(self.command(model_path, res, ["-m", "duration", "-t", str(self.duration_s())]),
                         limit_s, self.cpu_prefix())
        again = run_line(self.command(model_path, res, ["-m", "times", "-r", str(need)]),
                         limit_s, self.cpu_prefix())
        body = [f"rm -f {qres}", first,
                'if [ "$rc" -eq 0 ]; then',
                f"  n=$(grep -c , {qres} 2>/dev/null)",
                f'  if [ "${{n:-0}}" -lt {need} ]; then',
                f'    echo "latbench: $n runs in {self.duration_s()} s, fewer than {need}; timing {need} runs"',
                f"    rm -f {qres}", "    " + again, "  fi", "fi"]
        return ScriptItem(item.id, body, {"runs": res})

    def parse_item(self, output: ItemOutput) -> dict:
        return parse_result(output.text, output.files.get("runs", ""), self.profile.protocol)


def parse_result(stdout: str, result_file: str, protocol) -> dict:
    """A result record from a run's stdout and result file (ParseError when neither has times)."""
    found = parse_stdout(stdout)
    for key, value in parse_stdout("\n".join(ln for ln in result_file.splitlines() if "," not in ln)).items():
        found.setdefault(key, value)  # the statistics -s appends to the file, if stdout lacks them
    samples = parse_result_file(result_file)
    summary = summary_from_stdout(found)
    extra = {k: found[k] for k in ("session", "first", "cpu_percent", "peak_bytes") if k in found}
    if "session" in extra:
        extra["session_ms"] = extra.pop("session")
    if "first" in extra:
        extra["first_inference_ms"] = extra.pop("first")
    if samples:
        kept, info = apply_protocol(
            samples, warmup_runs=protocol.warmup_runs, warmup_s=protocol.warmup_s, runs=protocol.runs,
            min_time_s=protocol.min_time_s, max_runs=protocol.max_runs, warmup_done_runs=1,
            warmup_done_s=extra.get("first_inference_ms", 0.0) / 1000.0)
        if not kept:
            return {"ok": False, "error": f"all {len(samples)} runs of {TOOL} went to the warm-up "
                                          "(raise protocol.min_time_s or lower warmup_s)"}
        record = {"ok": True, "samples_ms": kept, "extra": {**extra, **info}}
        if summary is not None:
            record["summary"] = summary.to_dict()
        return record
    if summary is not None and summary.count > 0 and summary.mean_ms is not None:
        return {"ok": True, "summary": summary.to_dict(), "extra": extra}
    lines = stdout.splitlines()
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    raise ParseError(TOOL, len(lines), last, "no per-run times and no summary of timed runs")
