"""TensorRT's `trtexec`: its command line and every generation of its output.

Each model is built into an engine once (``--onnx ... --saveEngine``, cached on the
device by the model's content and the build flags) and timed from the engine after.
``--exportTimes=FILE`` writes every timed query as JSON (``computeMs``, ``latencyMs``,
...): the raw samples. Its log is kept for the summary, which changed over releases:

    [I] Host Latency                     (TensorRT 7: a block, one statistic a line)
    [I] min: 1.64 ms (end to end 1.66 ms)
    [I] percentile: 1.67 ms at 99% (end to end 3.04 ms at 99%)
    [I] GPU Compute
    [I] min: 1.50 ms ...

    [06/26/2023-11:30:51] [I] === Performance summary ===            (TensorRT 8 and 10)
    [06/26/2023-11:30:51] [I] Latency: min = 4.27 ms, max = 5.82 ms, mean = 4.29 ms,
        median = 4.29 ms, percentile(90%) = 4.30 ms, percentile(95%) = 4.31 ms, percentile(99%) = 4.32 ms
    [06/26/2023-11:30:51] [I] GPU Compute Time: min = ...

The ``metric`` option picks what is stored: ``gpu_compute`` (default: the GPU time of the
model's kernels, which is what an op costs inside a network) or ``latency`` (adding the
host-device copies of its inputs and outputs).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from latbench.runners.base import BatchItem
from latbench.runners.parsing import (
    NUMBER, ParseError, Summary, apply_protocol, numbered_lines, percentile_key, to_float)
from latbench.runners.script import ItemOutput, ScriptItem, run_line
from latbench.runners.tool import Option, ToolRunner

TOOL = "trtexec"

#: metric option -> (summary name new, summary name old, JSON field)
METRICS = {
    "gpu_compute": ("GPU Compute Time", "GPU Compute", "computeMs"),
    "latency": ("Latency", "Host Latency", "latencyMs"),
}
_NEW_NAMES = ("End-to-End Host Latency", "GPU Compute Time", "Enqueue Time", "H2D Latency", "D2H Latency",
              "Latency")
_NEW_LINE = re.compile(r"^(" + "|".join(re.escape(n) for n in _NEW_NAMES) + r"): (min\b.*)$")
_NEW_STAT = re.compile(rf"^(min|max|mean|median|percentile\(({NUMBER})%\)) = ({NUMBER}) ms$")
_OLD_BLOCKS = {"Host Latency": "Host Latency", "Host latency": "Host Latency", "Enqueue Time": "Enqueue Time",
               "GPU Compute": "GPU Compute"}
_OLD_STAT_START = re.compile(r"^(min|max|mean|median|percentile):")
_OLD_STAT = re.compile(rf"^(min|max|mean|median): ({NUMBER}) ms(?: \(end to end ({NUMBER}) ms\))?$")
_OLD_PCT = re.compile(rf"^percentile: ({NUMBER}) ms at ({NUMBER})%(?: \(end to end ({NUMBER}) ms at "
                      rf"({NUMBER})%\))?$")
_OLD_OTHER = re.compile(rf"^(throughput|walltime|total compute time): ({NUMBER}) (qps|s)$")
_BANNER = re.compile(r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec(?: \[TensorRT v(\d+)\])?")
_VERSION = re.compile(r"^TensorRT version: (\d+\.\d+\.\d+)")
_WARMUP = re.compile(rf"^Warmup completed (\d+) queries over ({NUMBER}) ms$")
_TRACE = re.compile(rf"^Timing trace has (\d+) queries over ({NUMBER}) s$")
_TOTALS = re.compile(rf"^(Throughput|Total Host Walltime|Total GPU Compute Time): ({NUMBER}) (qps|s)$")


def version_from_number(number: str) -> str:
    """The banner's ``v8601`` -> "8.6.1", ``v100300`` -> "10.3.0" (TensorRT's NV_TENSORRT_VERSION)."""
    n = int(number)
    if n >= 10000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


@dataclass
class TrtexecOutput:
    status: str | None = None
    version: str | None = None
    warmups: int | None = None
    warmup_ms: float | None = None
    timed: int | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # metric name -> stat -> ms
    totals: dict[str, float] = field(default_factory=dict)

    def summary(self, name: str) -> Summary | None:
        found = self.stats.get(name)
        if not found or self.timed is None:
            return None
        pct = {k[1:]: v for k, v in found.items() if k.startswith("p")}
        return Summary(self.timed, mean_ms=found.get("mean"), min_ms=found.get("min"),
                       max_ms=found.get("max"), median_ms=found.get("median"), percentiles_ms=pct)


def parse_log(text: str) -> TrtexecOutput:
    """Read trtexec's log; ParseError names the first statistics line it cannot read."""
    out = TrtexecOutput()
    block: str | None = None
    for no, line in numbered_lines(text):
        s = line.strip()
        try:
            found = _BANNER.match(s)
            if found:
                out.status = found.group(1)
                if found.group(2):
                    out.version = out.version or version_from_number(found.group(2))
                continue
            found = _VERSION.match(s)
            if found:
                out.version = found.group(1)
                continue
            found = _WARMUP.match(s)
            if found:
                out.warmups, out.warmup_ms = int(found.group(1)), to_float(found.group(2))
                continue
            found = _TRACE.match(s)
            if found:
                out.timed = int(found.group(1))
                continue
            if s in _OLD_BLOCKS:
                block = _OLD_BLOCKS[s]
                out.stats[block] = {}
                continue
            if block is not None:
                if _OLD_STAT_START.match(s):
                    stat = _OLD_STAT.match(s)
                    pct = _OLD_PCT.match(s)
                    if stat:
                        out.stats[block][stat.group(1)] = to_float(stat.group(2))
                    elif pct:
                        out.stats[block]["p" + percentile_key(to_float(pct.group(2)))] = to_float(pct.group(1))
                    else:
                        raise ValueError(f"not a {block} statistic")
                    continue
                other = _OLD_OTHER.match(s)
                if other:
                    out.totals[other.group(1)] = to_float(other.group(2))
                    continue
                block = None
            found = _NEW_LINE.match(s)
            if found:
                stats: dict[str, float] = {}
                for part in found.group(2).split(", "):
                    stat = _NEW_STAT.match(part.strip())
                    if not stat:
                        raise ValueError(f"{part.strip()!r} is not 'name = value ms'")
                    key = ("p" + percentile_key(to_float(stat.group(2)))) if stat.group(2) else stat.group(1)
                    stats[key] = to_float(stat.group(3))
                out.stats[found.group(1)] = stats
                continue
            found = _TOTALS.match(s)
            if found:
                out.totals[found.group(1)] = to_float(found.group(2))
        except ValueError as exc:
            raise ParseError(TOOL, no, line, str(exc)) from None
    return out


def parse_times(text: str, field_name: str) -> list[float]:
    """One value per query from an --exportTimes JSON file, in query order."""
    values: list[float] = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip().lstrip(",").strip()
        if s in ("", "[", "]"):
            continue
        try:
            if not s.startswith("{"):
                raise ValueError("not a JSON object")
            # C++ streams print inf and nan, which JSON has no words for
            s = re.sub(r":\s*(-?)(inf|nan)\b", lambda m: f": {m.group(1)}Infinity" if m.group(2) == "inf"
                       else ": NaN", s)
            record = json.loads(s)
            value = float(record[field_name])
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"no {field_name!r}" if isinstance(exc, KeyError) else str(exc)
            raise ParseError(f"{TOOL} --exportTimes file", no, line, reason) from None
        values.append(value)
    return values


def parse_result(log: str, times_json: str, metric: str, protocol) -> dict:
    """A result record from a successful run (ParseError when it timed nothing readable)."""
    summary_name, old_name, json_field = METRICS[metric]
    parsed = parse_log(log)
    summary = parsed.summary(summary_name) or parsed.summary(old_name)
    extra: dict = {"metric": metric}
    for key, name in (("Throughput", "throughput_qps"), ("Total Host Walltime", "walltime_s"),
                      ("walltime", "walltime_s"), ("throughput", "throughput_qps")):
        if key in parsed.totals:
            extra[name] = parsed.totals[key]
    samples = parse_times(times_json, json_field) if times_json.strip() else []
    if parsed.timed is not None and parsed.warmups and len(samples) == parsed.timed + parsed.warmups:
        samples = samples[parsed.warmups:]  # TensorRT 7 and early 8 export the warm-up queries too
    if samples:
        kept, info = apply_protocol(
            [s for s in samples if math.isfinite(s)], warmup_runs=protocol.warmup_runs,
            warmup_s=protocol.warmup_s, runs=protocol.runs, min_time_s=protocol.min_time_s,
            max_runs=protocol.max_runs, warmup_done_runs=parsed.warmups or 0,
            warmup_done_s=(parsed.warmup_ms or 0.0) / 1000.0)
        if kept:
            record = {"ok": True, "samples_ms": kept, "extra": {**extra, **info}}
            if summary is not None:
                record["summary"] = summary.to_dict()
            return record
    if summary is not None and summary.count > 0:
        return {"ok": True, "summary": summary.to_dict(), "extra": extra}
    lines = log.splitlines()
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    raise ParseError(TOOL, len(lines), last, f"no timed queries and no {summary_name} summary")


class TrtexecRunner(ToolRunner):
    """Times .onnx models with TensorRT's trtexec (Jetson boards, GPUs)."""

    name = "trtexec"
    applies = frozenset({"max_runs"})  # parse_result keeps at most max_runs exported times
    tool = TOOL
    runtime = "tensorrt"
    formats = ("onnx",)
    options = {
        "metric": Option((str,), "gpu_compute (default) or latency (with host-device copies)"),
        "fp16": Option((bool,), "true: build with --fp16"),
        "int8": Option((bool,), "true: build with --int8"),
        "best": Option((bool,), "true: build with --best"),
        "spin_wait": Option((bool,), "false: no --useSpinWait (default on: steadier timings)"),
        "no_data_transfers": Option((bool,), "true: --noDataTransfers"),
        "cuda_graph": Option((bool,), "true: --useCudaGraph"),
    }
    install_hint = ("TensorRT ships it as /usr/src/tensorrt/bin/trtexec (JetPack); or set "
                    "runtime_options: {binary: /path/to/trtexec} in the profile")

    @classmethod
    def check_profile(cls, p) -> None:
        super().check_profile(p)
        from latbench.errors import ProfileError

        metric = p.runtime_options.get("metric", "gpu_compute")
        if metric not in METRICS:
            raise ProfileError(f"{p.source}: runtime_options metric is {metric!r}",
                               f"use one of {', '.join(METRICS)}")

    def default_binaries(self) -> list[str]:
        return ["trtexec", "/usr/src/tensorrt/bin/trtexec", f"{self.transport.workdir}/bin/trtexec"]

    def version_probe(self) -> list[str]:
        return ['"$LB_BIN" --help 2>&1 | head -n 3 | while IFS= read -r l; do echo "$LB_M probe $l"; done']

    def version_from_probe(self, probe: list[str]) -> str | None:
        return parse_log("\n".join(probe)).version

    def model_limit_s(self, n_items: int) -> float:
        return float(self.profile.timeout_s)  # building an engine can take minutes

    def build_args(self) -> list[str]:
        return [f"--{flag}" for flag in ("fp16", "int8", "best") if self.opt(flag)]

    def run_args(self, times_path: str) -> list[str]:
        p = self.profile.protocol
        args = [f"--warmUp={math.ceil(p.warmup_s * 1000)}", f"--iterations={p.runs + p.warmup_runs}",
                f"--duration={math.ceil(p.min_time_s)}", f"--exportTimes={times_path}"]
        if self.opt("spin_wait", True):
            args.append("--useSpinWait")
        if self.opt("no_data_transfers"):
            args.append("--noDataTransfers")
        if self.opt("cuda_graph"):
            args.append("--useCudaGraph")
        return args + list(self.opt("extra_args", []))

    def engine_name(self, item: BatchItem) -> str:
        """Engines are cached by the model's content, the flags (extra_args may hold build flags
        such as --fp16, so they count too) and the trtexec binary: an engine is bound to the
        TensorRT that built it, and after an upgrade (a new JetPack) --loadEngine would fail on
        every cached one."""
        digest = hashlib.sha256(item.path.read_bytes())
        digest.update("\0".join(self.build_args() + list(self.opt("extra_args", []))).encode())
        self.binary()  # reads the version and the binary's hash (info) if nothing has yet
        digest.update(f"\0{self._identity}".encode())
        return f"{PurePosixPath(item.path.name).stem}-{digest.hexdigest()[:16]}.engine"

    def prelude(self) -> list[str]:
        return [f"mkdir -p {shlex.quote(self.transport.workdir + '/engines')} "
                f"{shlex.quote(self.transport.workdir + '/results')}"]

    def item(self, item: BatchItem, model_path: str, limit_s: float) -> ScriptItem:
        engine = f"{self.transport.workdir}/engines/{self.engine_name(item)}"
        times = f"{self.transport.workdir}/results/{item.id}.times.json"
        run = self.run_args(times)
        load = run_line([self.binary(), f"--loadEngine={engine}", *run], limit_s, self.cpu_prefix())
        build = run_line([self.binary(), f"--onnx={model_path}", f"--saveEngine={engine}",
                          *self.build_args(), *run], limit_s, self.cpu_prefix())
        body = [f"rm -f {shlex.quote(times)}",
                f"if [ -f {shlex.quote(engine)} ]; then", "  " + load, "else", "  " + build, "fi"]
        return ScriptItem(item.id, body, {"times": times})

    def parse_item(self, output: ItemOutput) -> dict:
        return parse_result(output.text, output.files.get("times", ""), self.opt("metric", "gpu_compute"),
                            self.profile.protocol)
