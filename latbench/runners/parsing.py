"""Shared helpers for reading benchmark tools' text output.

The tools' logs mix what we need (timing lines) with much we do not (parameter
echoes, delegate notices), and their wording changes between releases. The
parsers therefore skip lines they have no rule for, but a line that a rule
claims (it starts like a timing line) must parse completely, or a `ParseError`
names its line number and text: a half-read number is worse than none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from latbench.errors import DeviceError

#: One number as C++ iostreams print it: 12, 12.5, 1.2e+03, 5e-05, inf, nan.
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)"
_NUMBER_RE = re.compile(rf"^(?:{NUMBER})$", re.IGNORECASE)

#: Log prefixes the tools put before a message, tried in order (each at most once).
_PREFIXES = [
    # TensorFlow's C++ logging: "2018-09-10 12:36:15.624324: I tensorflow/x.cc:469] "
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "),
    # absl / glog: "I0820 10:00:00.123456   12345 benchmark_model.cc:12] "
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] "),
    # TensorRT samples: "[11/22/2024-10:00:00] " then "[I] " and maybe "[TRT] "
    re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] "),
    re.compile(r"^\[[IWEVF]\] "),
    re.compile(r"^\[TRT\] "),
    # TFLite's tools logging: "INFO: ", "WARN: ", "ERROR: ", "VERBOSE: "
    re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE|DEBUG): "),
]


class ParseError(DeviceError):
    """A tool printed a line that looks like a result but could not be read."""

    def __init__(self, tool: str, line_no: int, line: str, reason: str):
        shown = line if len(line) <= 160 else line[:157] + "..."
        super().__init__(
            f"cannot read {tool} output, line {line_no}: {shown!r} ({reason})",
            f"this {tool} prints a format latbench does not know; check its version with "
            "`latbench doctor` and report the line")
        self.tool, self.line_no, self.line, self.reason = tool, line_no, line, reason


def strip_log_prefix(line: str) -> str:
    """The message without the tool's log prefixes (timestamps, severity tags)."""
    text = line.rstrip("\r\n")
    for prefix in _PREFIXES:
        found = prefix.match(text)
        if found:
            text = text[found.end():]
    return text


def numbered_lines(text: str, first: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, message without log prefix) for each line of `text`."""
    for no, raw in enumerate(text.splitlines(), first):
        yield no, strip_log_prefix(raw)


def to_float(text: str) -> float:
    """Parse one number as the tools print it; ValueError when it is not one."""
    text = text.strip()
    if not _NUMBER_RE.match(text):
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def key_values(text: str) -> dict[str, str]:
    """``"count=5 first=10 curr=9"`` -> ``{"count": "5", ...}``; ValueError on a bare word."""
    out: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r} is not key=value")
        out[key] = value
    return out


def last_error_line(text: str, markers: Iterable[str] = ("ERROR", "Error", "error", "[E]", "FAILED",
                                                          "Aborted", "Segmentation", "not found")) -> str:
    """The most telling line of a failed tool's output: its last error-looking line, else its
    last non-empty line, else a note that it printed nothing."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(m in ln for m in markers):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


#: Lines a tool prints when it gives up, after the line that says why: never the cause, so
#: `error_line` reports them only when nothing more specific was printed.
_CLOSING = re.compile(
    r"^(?:&&&& FAILED\b"  # trtexec's closing banner, which repeats the command line
    r"|Benchmarking failed\.?$|Failed to initialize the interpreter\.?$|Registration failed\.?$"  # benchmark_model
    r"|Engine set up failed$|Inference set up failed$|Failed to create engine from model or file\.?$"
    r"|Parsing model failed$|Failed to parse onnx file$|Engine deserialization failed\.?$"
    r"|Got invalid engine!?$|Building engine failed$)",  # trtexec
    re.IGNORECASE)
#: Severity tags of lines that are not errors, whatever words they hold.
_NOT_ERRORS = re.compile(r"^(?:\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] )?(?:\[[IV]\] |(?:INFO|VERBOSE|DEBUG): |[IV]\d{4} "
                         r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IV] )")
_ERROR_MARKERS = ("ERROR", "Error", "error", "[E]", "FAILED", "Failed", "failed", "Aborted", "Segmentation",
                  "not found", "Check failed")

#: A known cause (a substring of its error line) -> how to fix it.
ERROR_HINTS = (
    ("Plugin not found", "the model has an op TensorRT cannot import (no built-in importer or plugin): "
                         "export it with ops TensorRT supports, or time it with another runtime"),
    ("No importer registered for op", "the model has an op TensorRT cannot import: export it with ops "
                                      "TensorRT supports, or time it with another runtime"),
    ("Failed to mmap model", "the model file is missing or unreadable on the device: check the work "
                             "directory's free space and permissions (latbench doctor)"),
    ("Could not open '", "a file it needs (the model?) is missing or unreadable on the device: check the "
                         "work directory's free space and permissions (latbench doctor)"),
    ("Didn't find op for builtin opcode", "this benchmark_model is older than the converter that wrote the "
                                          "model: use a benchmark_model from a newer TFLite/LiteRT release"),
    ("is not a registered function/op", "this onnxruntime is older than the model's opset: use a newer "
                                        "onnxruntime_perf_test or export with a lower opset"),
    ("Unknown flag", "this tool does not know one of its arguments: check runtime_options extra_args "
                     "against its --help"),
)


def error_line(text: str, hints: Iterable[tuple[str, str]] = ERROR_HINTS, *, fallback: bool = True) -> str:
    """One line saying why a tool failed: the FIRST specific error line it printed (without its
    log prefix), skipping the generic lines tools close with ('&&&& FAILED ...', 'Benchmarking
    failed.', 'Engine set up failed'), which name no cause; then a hint for a known cause.
    Falls back to the first closing line, else (`fallback`) the last non-empty line or 'no
    output'; without `fallback`, "" when no line looks like an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    closing = None
    found = None
    for ln in lines:
        if _NOT_ERRORS.match(ln) or not any(m in ln for m in _ERROR_MARKERS):
            continue
        message = strip_log_prefix(ln).strip()
        if _CLOSING.match(message):
            closing = closing or message
            continue
        found = message
        break
    line = found or closing
    if not line:
        if not fallback:
            return ""
        line = strip_log_prefix(lines[-1]).strip() if lines else "no output"
    line = line if len(line) <= 300 else line[:297] + "..."
    for needle, hint in hints:
        if needle in line:
            return f"{line}; {hint}"
    return line


@dataclass
class Summary:
    """Statistics a tool reported about its timed runs, in milliseconds.

    Tools such as benchmark_model print only these, not the runs themselves. Fields a tool
    did not report stay None; `percentiles_ms` maps a percentile ("50", "99.9") to its value.
    `std_kind` says whether `std_ms` is the population ("population") or sample ("sample")
    standard deviation, as the two differ for few runs.
    """

    count: int
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    median_ms: float | None = None
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    first_ms: float | None = None
    last_ms: float | None = None
    std_kind: str = "population"

    def to_dict(self) -> dict:
        """Plain JSON-able dict, leaving out what was not reported."""
        out = {"count": self.count}
        for name in ("mean_ms", "std_ms", "min_ms", "max_ms", "median_ms", "first_ms", "last_ms"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.percentiles_ms:
            out["percentiles_ms"] = dict(self.percentiles_ms)
        if self.std_ms is not None:
            out["std_kind"] = self.std_kind
        return out


def percentile_key(q: float) -> str:
    """90.0 -> "90", 99.9 -> "99.9": how a percentile is named in `Summary.percentiles_ms`."""
    return f"{q:g}"


def apply_protocol(samples_ms: list[float], *, warmup_runs: int, warmup_s: float, runs: int,
                   min_time_s: float, max_runs: int, warmup_done_runs: int = 0,
                   warmup_done_s: float = 0.0) -> tuple[list[float], dict]:
    """Cut a tool's per-run times to latbench's protocol.

    Tools warm up by their own rule (one run, or a time); the leading samples are treated as
    further warm-up until `warmup_runs` runs and `warmup_s` seconds are reached counting what
    the tool already did, and at most `max_runs` of the rest are kept. `protocol_met` says
    whether the kept runs reach `runs` runs and `min_time_s` seconds.
    """
    skip, done_runs, done_s = 0, warmup_done_runs, warmup_done_s
    while skip < len(samples_ms) and (done_runs < warmup_runs or done_s < warmup_s):
        done_s += samples_ms[skip] / 1000.0
        done_runs += 1
        skip += 1
    kept = samples_ms[skip:skip + max_runs]
    kept_s = sum(kept) / 1000.0
    met = len(kept) >= runs and (kept_s >= min_time_s or len(kept) >= max_runs)
    return kept, {"warmup_dropped": skip, "runs_kept": len(kept), "timed_s": kept_s,
                  "protocol_met": met}
