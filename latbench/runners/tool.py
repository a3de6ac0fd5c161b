"""Runners that drive a command-line benchmark tool (benchmark_model, onnxruntime_perf_test,
trtexec): each batch is one generated sh script (see `latbench.runners.script`), run by one
shell on the device; each model's framed output is parsed by the tool's own module."""

from __future__ import annotations

import abc
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from latbench.errors import DeviceError, ProfileError
from latbench.profiles import DeviceProfile
from latbench.runners.base import BatchItem, BatchOutput, Runner
from latbench.runners.parsing import ParseError, error_line, last_error_line
from latbench.runners.script import (
    ItemOutput, ScriptItem, batch_script, finished_items, info_script, new_nonce, parse_kv, split_output,
    state_script)
from latbench.transports.base import Transport


@dataclass(frozen=True)
class Option:
    """One runtime option a tool runner understands."""

    types: tuple
    doc: str


#: Options every tool runner understands. binary, binary_local and version only say where the
#: tool is and what it is (the version goes into the runtime label); extra_args changes runs.
COMMON_OPTIONS = {
    "binary": Option((str,), "path of the tool on the device (default: searched)"),
    "binary_local": Option((str,), "path of the tool on this host, pushed to the device's work directory"),
    "version": Option((str,), "the tool's version, when it cannot be read from the device"),
    "extra_args": Option((list,), "more arguments for every run, e.g. ['--use_gpu=true']"),
}


#: Linux signal numbers (the device's, not this host's: macOS numbers some differently) -> what
#: a tool killed by one went through.
_SIGNALS = {
    1: "was killed by SIGHUP (signal 1: its shell or connection closed)",
    2: "was stopped by SIGINT (signal 2: interrupted)",
    3: "was stopped by SIGQUIT (signal 3)",
    4: "crashed (SIGILL, signal 4: an instruction this CPU lacks; a binary built for another CPU?)",
    5: "crashed (SIGTRAP, signal 5)",
    6: "aborted (SIGABRT, signal 6: a failed check or assertion inside the tool)",
    7: "crashed (SIGBUS, signal 7: a bad memory access; a model file cut short?)",
    8: "crashed (SIGFPE, signal 8: an arithmetic fault)",
    9: ("was killed by SIGKILL (signal 9: out of memory? Android's low-memory killer and Linux's OOM "
        "killer send it; try a smaller model, or free memory on the device)"),
    11: "crashed (SIGSEGV, signal 11: a segmentation fault inside the tool or its runtime)",
    13: "was killed by SIGPIPE (signal 13: its output pipe closed)",
    15: "was killed by SIGTERM (signal 15: stopped by someone or something on the device)",
    24: "was killed by SIGXCPU (signal 24: over its CPU time limit)",
    25: "was killed by SIGXFSZ (signal 25: over its file size limit)",
}


def signal_death(rc: int | None) -> str | None:
    """How a tool whose shell exit status is `rc` died of a signal (sh reports 128 + N), or None
    when it exited by itself (255 is exit(-1), not a signal)."""
    if rc is None or not 128 < rc < 128 + 65:
        return None
    number = rc - 128
    return _SIGNALS.get(number, f"was killed by signal {number}")


class ToolRunner(Runner):
    """A runner that times each model with a benchmark tool, a whole batch in one shell."""

    tool: str  # the tool's name, as reported in runtime versions
    runtime: str  # the profile runtime this tool runs
    formats: tuple[str, ...]
    options: dict[str, Option] = {}
    install_hint: str = ""

    def __init__(self, transport: Transport, profile: DeviceProfile):
        super().__init__(transport, profile)
        self.check_profile(profile)
        self._binary: str | None = None
        self._device: dict | None = None  # the device description info() read
        self._identity = ""  # the tool's version and binary hash, as info() read them

    # ---- profile ---------------------------------------------------------------------------

    @classmethod
    def check_profile(cls, p: DeviceProfile) -> None:
        """What this runner cannot serve in profile `p` (parse_profile asks, so `latbench
        devices` flags it before anything connects)."""
        if p.runtime != cls.runtime:
            raise ProfileError(f"{p.source}: runner {cls.name} runs runtime {cls.runtime}, "
                               f"but the profile says runtime: {p.runtime}",
                               f"set runtime: {cls.runtime} or pick another runner")
        if p.format not in cls.formats:
            raise ProfileError(f"{p.source}: runner {cls.name} times {'/'.join(cls.formats)} models, "
                               f"but the profile says format: {p.format}",
                               f"set format: {cls.formats[0]}")
        known = {**COMMON_OPTIONS, **cls.options}
        for key, value in p.runtime_options.items():
            if key not in known:
                raise ProfileError(f"{p.source}: runtime_options has {key!r}, which runner {cls.name} "
                                   "does not know", f"known: {', '.join(sorted(known))}")
            types = known[key].types
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise ProfileError(f"{p.source}: runtime_options {key!r} must be "
                                   f"{' or '.join(t.__name__ for t in types)}; got {value!r}",
                                   f"set {key}: {known[key].doc}")
        extra = p.runtime_options.get("extra_args", [])
        if not all(isinstance(a, str) for a in extra):
            raise ProfileError(f"{p.source}: runtime_options 'extra_args' must be a list of strings",
                               "e.g. extra_args: ['--use_gpu=true']")

    def opt(self, key: str, default=None):
        return self.profile.runtime_options.get(key, default)

    def candidates(self) -> list[str]:
        """Where to look for the tool, first match wins."""
        return [self.opt("binary")] if self.opt("binary") else self.default_binaries()

    def default_binaries(self) -> list[str]:
        return [self.tool]

    def cpu_prefix(self) -> list[str]:
        """``taskset MASK`` when the profile pins the benchmark to some cores."""
        mask = self.profile.connection.get("cpu_mask")
        return ["taskset", str(mask)] if mask else []

    # ---- info, state, version --------------------------------------------------------------

    def version_probe(self) -> list[str]:
        """sh lines (run with $LB_BIN set) printing ``$LB_M probe ...`` lines about the version."""
        return []

    def version_from_probe(self, probe: list[str]) -> str | None:
        return None

    def _sh(self, script: str, timeout_s: float) -> str:
        res = self.transport.run(["sh", "-c", script], timeout_s)
        return res.stdout

    def info(self) -> dict:
        if self.opt("binary_local"):
            local = Path(self.opt("binary_local")).expanduser()
            if not local.is_file():
                raise ProfileError(f"{self.profile.source}: runtime_options binary_local {str(local)!r} "
                                   "does not exist on this host", "fix the path or drop binary_local")
            self._binary = self.transport.stage(local, "bin")
        nonce = new_nonce()
        cands = [self._binary] if self._binary else self.candidates()
        stdout = self._sh(info_script(nonce, cands, self.transport.workdir, self.version_probe()), 60)
        kv, probe, state, done = parse_kv(stdout, nonce)
        if not done:
            raise DeviceError(f"could not read the device description of {self.profile.name}",
                              "check that `sh` works there: latbench doctor --device "
                              f"{self.profile.name}")
        device = {k: v for k, v in kv.items() if k not in ("binary", "sha256", "executable", "cores",
                                                             "free_kb") and not k.startswith("max_khz.")}
        self._device = device
        info: dict = {
            "tool": self.tool, "binary": kv.get("binary"), "binary_sha256": kv.get("sha256"),
            "looked_for": cands, "device": device, "state": state,
            "cores": int(kv["cores"]) if kv.get("cores", "").isdigit() else None,
            "free_kb": int(kv["free_kb"]) if kv.get("free_kb", "").isdigit() else None,
            "max_frequencies_khz": {k.split(".", 1)[1]: int(v) for k, v in kv.items()
                                    if k.startswith("max_khz.") and v.isdigit()},
            "runtimes": {},
        }
        if kv.get("binary") and kv.get("executable") == "yes":
            self._binary = kv["binary"]
            version = (self.opt("version") or self.version_from_probe(probe)
                       or (f"sha256:{kv['sha256'][:12]}" if kv.get("sha256") else "unversioned"))
            info["runtimes"][self.runtime] = {"package": self.tool, "version": version}
            self._identity = f"{version} sha256:{kv.get('sha256') or '?'}"
        return info

    def state(self) -> dict:
        nonce = new_nonce()
        frames = split_output(self._sh(state_script(nonce), 30), nonce)
        return frames.before or {"max_temperature_c": None}

    def runtime_version(self, info: dict) -> str:
        found = info.get("runtimes", {}).get(self.runtime)
        if not found:
            where = ", ".join(info.get("looked_for") or self.candidates())
            state = "is not executable" if info.get("binary") else "was not found"
            raise DeviceError(f"{self.tool} {state} on {self.profile.name} (looked for {where})",
                              self.install_hint or f"install {self.tool} there, or set "
                              f"runtime_options: {{binary: /path/to/{self.tool}}} in {self.profile.source}")
        return f"{found['package']} {found['version']}"

    # ---- batches ---------------------------------------------------------------------------

    @abc.abstractmethod
    def item(self, item: BatchItem, model_path: str, limit_s: float) -> ScriptItem:
        """The script part that times `item`, staged at `model_path` on the device."""

    @abc.abstractmethod
    def parse_item(self, output: ItemOutput) -> dict:
        """A successful run's output -> a result record (``ok``, ``samples_ms`` or ``summary``).
        Raises ParseError when the output cannot be read."""

    def prelude(self) -> list[str]:
        """sh lines run once before the first model."""
        return []

    def failure(self, output: ItemOutput) -> str:
        """One line saying why a model's run failed: the time limit (``timeout`` exits 124; the
        batch script turns busybox's SIGTERM, 143, into 124), a signal (the shell says "Killed"
        or "Segmentation fault" on its own stderr, not in the tool's output, so the tool's last
        line would mislead), else the tool's own error line."""
        if output.rc == 124:
            return f"{self.tool} did not finish within the per-model time limit"
        died = signal_death(output.rc)
        if died:
            said = error_line(output.text, fallback=False)
            return f"{self.tool} {died}" + (f"; it had printed: {said}" if said else "")
        return f"{self.tool} exited with {output.rc}: {error_line(output.text)}"

    def model_limit_s(self, n_items: int) -> float:
        """Per-model time limit: a model that hangs costs its share, not the whole batch."""
        budget = float(self.profile.timeout_s)
        return min(budget, max(60.0, 3.0 * budget / max(1, n_items)))

    def binary(self) -> str:
        if self._binary is None:
            self.runtime_version(self.info())  # raises with a fix when the tool is missing
        assert self._binary is not None
        return self._binary

    def start_record(self, state: dict | None) -> dict:
        """What each stored batch says about where it ran: the tool, and the device's model,
        build and serial (another phone, or an OTA update, under the same profile shows here)."""
        return {"runner": self.name, "tool": self.tool, "binary": self._binary,
                "runtime": self.runtime, "threads": self.profile.threads,
                "options": dict(self.profile.runtime_options), "device": self._device,
                "where": getattr(self.transport, "where", None), "state": state}

    def run_batch(self, items: list[BatchItem]) -> BatchOutput:
        self.binary()
        limit_s = self.model_limit_s(len(items))
        remotes = self.transport.stage_many([it.path for it in items])  # one hash check per batch
        parts = [self.item(it, remote, limit_s) for it, remote in zip(items, remotes)]
        nonce = new_nonce()
        script = batch_script(parts, nonce=nonce, workdir=self.transport.workdir, prelude=self.prelude(),
                              removes_itself=True)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"batch-{uuid.uuid4().hex[:12]}.sh"
            local.write_text(script)
            remote = self.transport.stage(local, "batches")
            return self.run_reading(["sh", remote, remote],
                                    lambda stdout, stderr, rc: self.read_batch(stdout, stderr, rc, nonce),
                                    cut_short=lambda text: finished_items(text, nonce))

    def read_batch(self, stdout: str, stderr: str, exit_code: int, nonce: str) -> BatchOutput:
        """Turn a batch script's output into results; a model that failed does not stop the rest."""
        frames = split_output(stdout, nonce)
        out = BatchOutput(start=self.start_record(frames.before),
                          end={"state": frames.after} if frames.after else None)
        for item_id in frames.order:
            output = frames.items[item_id]
            if "No space left on device" in output.text:
                # its result file may be cut short: nothing of this model is taken, and collect
                # stops on the error instead of storing truncated timings
                out.error = (f"the device's disk filled while {self.tool} ran model {item_id}: "
                             f"{last_error_line(output.text, ('No space left on device',))}")
                break
            if output.rc is None:
                out.error = (f"the batch stopped while {self.tool} ran model {item_id}: "
                             f"{last_error_line(output.text + chr(10) + stderr)}")
                break
            if output.rc != 0:
                out.results[item_id] = {"ok": False, "error": self.failure(output)}
                continue
            try:
                out.results[item_id] = self.parse_item(output)
            except ParseError as exc:
                out.results[item_id] = {"ok": False, "error": exc.message}
        if out.error is None and not frames.done:
            tail = last_error_line(stderr or stdout)
            out.error = f"the batch script exited with {exit_code} before finishing: {tail}"
        return out
