"""TensorRT's `trtexec`: its command line and every generation of its output.

Each model is built into an engine once (``--onnx ... --saveEngine``, cached on the
device by the model's content and the build flags) and timed from the engine after; a
build moves its engine into place only when it succeeded, and a cached engine that does
not load is built again.
``--exportTimes=FILE`` writes every timed query as JSON (``computeMs``, ``latencyMs``,
...): the raw samples, of which the batch prints only as many as can be kept. Its log is
kept for the summary, which changed over releases:

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

import dataclasses
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


#: What the batch script says when a cached engine did not load and is built again.
REBUILD_NOTICE = "latbench: the cached engine did not load"
#: The line the batch script adds after the --exportTimes records it printed: how many the file had.
RECORDS_TRAILER = "# latbench: records"
#: --exportTimes records printed beyond max_runs and the warm-up runs (TensorRT 7 exports its
#: warm-up queries first; see `TrtexecRunner.export_limit`).
EXPORTED_WARMUP_MARGIN = 2000


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


def split_records_trailer(text: str) -> tuple[str, int | None]:
    """The --exportTimes records the batch printed, and the record count of the whole file from
    the line it adds after them (None without one)."""
    total = None
    kept = []
    for line in text.splitlines():
        if line.startswith(RECORDS_TRAILER):
            count = line[len(RECORDS_TRAILER):].strip()
            total = int(count) if count.isdigit() else None
        else:
            kept.append(line)
    return "\n".join(kept), total


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
    times_json, total = split_records_trailer(times_json)
    samples = parse_times(times_json, json_field) if times_json.strip() else []
    total = max(total or 0, len(samples))  # the file's record count; the batch prints the first ones
    if total > len(samples):
        extra["exported_records"] = total  # the rest were not printed (see TrtexecRunner.export_limit)
    if parsed.timed is not None and parsed.warmups and total == parsed.timed + parsed.warmups:
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

    def export_limit(self) -> int:
        """Most --exportTimes records printed per model: at ~10k queries/s a 1 s run writes 10k
        records (~3 MB of JSON) of which `parse_result` keeps at most max_runs, after the
        warm-up. The margin covers the warm-up queries TensorRT 7 puts at the file's start and
        the warm-up runs `apply_protocol` drops after them."""
        p = self.profile.protocol
        return p.max_runs + 2 * p.warmup_runs + EXPORTED_WARMUP_MARGIN

    def item(self, item: BatchItem, model_path: str, limit_s: float) -> ScriptItem:
        """Load the cached engine; build it when there is none, or when it did not load (a
        file cut short, or one another TensorRT wrote). A build writes ENGINE.part and moves
        it into place only when trtexec succeeded, so a failed or killed build leaves no
        engine that every later batch would fail to load."""
        engine = f"{self.transport.workdir}/engines/{self.engine_name(item)}"
        part = engine + ".part"
        times = f"{self.transport.workdir}/results/{item.id}.times.json"
        shown = times + ".head"
        run = self.run_args(times)
        qe, qp, qt = shlex.quote(engine), shlex.quote(part), shlex.quote(times)
        load = run_line([self.binary(), f"--loadEngine={engine}", *run], limit_s, self.cpu_prefix())
        build = run_line([self.binary(), f"--onnx={model_path}", f"--saveEngine={part}",
                          *self.build_args(), *run], limit_s, self.cpu_prefix())
        body = [f"rm -f {qt} {shlex.quote(shown)}",
                f"if [ -f {qe} ]; then",
                "  " + load,
                '  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then',
                f'    echo "{REBUILD_NOTICE} (exit $rc); building it again"',
                f"    rm -f {qe} {qt}",
                "  fi",
                "fi",
                f"if [ ! -f {qe} ]; then",
                f"  rm -f {qp}",
                "  " + build,
                f'  if [ "$rc" -eq 0 ] && [ -s {qp} ]; then mv -f {qp} {qe}; else rm -f {qp}; fi',
                "fi",
                # print the "[" line and at most export_limit() records (one a line), and how many
                # there were; a full disk says so in the model's output (read_batch stops on it)
                f"[ -f {qt} ] && {{ {{ head -n {self.export_limit() + 1} {qt}; "
                f'echo "{RECORDS_TRAILER} $(grep -c {shlex.quote("{")} {qt})"; }} > {shlex.quote(shown)}; }} 2>&1']
        return ScriptItem(item.id, body, {"times": shown})

    def parse_item(self, output: ItemOutput) -> dict:
        text = output.text
        rebuilt = REBUILD_NOTICE in text
        if rebuilt:  # the failed load's log is not this run's
            text = text[text.rindex(REBUILD_NOTICE):].partition("\n")[2]
        record = parse_result(text, output.files.get("times", ""), self.opt("metric", "gpu_compute"),
                              self.profile.protocol)
        if rebuilt:
            record["extra"]["engine_rebuilt"] = True
        return record

    def failure(self, output: ItemOutput) -> str:
        text = output.text
        if REBUILD_NOTICE in text:  # say why the rebuild failed, not why the old engine did not load
            text = text[text.rindex(REBUILD_NOTICE):].partition("\n")[2]
        return super().failure(dataclasses.replace(output, text=text))
