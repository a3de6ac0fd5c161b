"""Host side of the bundled Python runner: push it, build its commands, read its output."""

from __future__ import annotations

import json
import shlex
import tempfile
import uuid
from pathlib import Path

from latbench.errors import DeviceError
from latbench.runners import PYRUNNER_PATH
from latbench.runners.base import BatchItem, BatchOutput, Runner

_INSTALL_HINT = {"onnxruntime": "pip install onnxruntime", "litert": "pip install ai-edge-litert (or tflite-runtime)"}


def _local_tflite_hint() -> str:
    """On this host the .tflite models are made here too: the extra brings the converter as well."""
    from latbench.tflite import INSTALL_HINT

    return f"{INSTALL_HINT} (the interpreter and the converter)"


def install_fix(hint: str, interpreter: str | None) -> str:
    """`pip install X` as the device's own interpreter runs it: a bare `pip` there is often
    another Python's."""
    if interpreter and hint.startswith("pip install "):
        return f"{shlex.quote(interpreter)} -m {hint}"
    return hint


class PythonRunner(Runner):
    name = "python"
    applies = frozenset({"max_runs", "rel_ci"})
    _remote_runner: str | None = None

    def _runner_path(self) -> str:
        if self._remote_runner is None:
            self._remote_runner = self.transport.stage(PYRUNNER_PATH, "runner")
        return self._remote_runner

    def _json_command(self, *args: str, timeout_s: float = 120) -> dict:
        res = self.transport.run([self.transport.python(), self._runner_path(), *args], timeout_s)
        for line in res.stdout.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeviceError(f"the Python runner failed on {self.profile.name} "
                          f"(exit {res.exit_code}): {tail[0][:300]}",
                          f"check that `{self.transport.python()}` works on the device")

    def info(self) -> dict:
        return self._json_command("info")

    def state(self) -> dict:
        return self._json_command("state", timeout_s=30)

    def runtime_version(self, info: dict) -> str:
        found = info.get("runtimes", {}).get(self.profile.runtime)
        if not found:
            raise DeviceError(
                f"runtime {self.profile.runtime} is not installed for {info.get('executable', 'python')} "
                f"on {self.profile.name}",
                _local_tflite_hint() if self.profile.transport == "local" and self.profile.runtime == "litert"
                else install_fix(_INSTALL_HINT.get(self.profile.runtime, "install it"), info.get("executable")))
        return f"{found['package']} {found['version']}"

    def run_batch(self, items: list[BatchItem]) -> BatchOutput:
        remotes = self.transport.stage_many([it.path for it in items])  # one hash check per batch
        batch = {
            "runtime": self.profile.runtime, "threads": self.profile.threads,
            "options": self.profile.runtime_options, "protocol": self.profile.protocol.timing(),
            "items": [{"id": it.id, "path": path} for it, path in zip(items, remotes)],
        }
        if self.profile.cpus:
            batch["cpus"] = self.profile.cpus
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"batch-{uuid.uuid4().hex[:12]}.json"
            local.write_text(json.dumps(batch))
            remote = self.transport.stage(local, "batches")
            return self.run_reading([self.transport.python(), self._runner_path(), "run", remote], parse_output)


def parse_output(stdout: str, stderr: str, exit_code: int) -> BatchOutput:
    """Read the runner's JSON lines; keep every finished result even if the runner died."""
    out = BatchOutput(start=None)
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue  # runtimes sometimes print to stdout
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
        event = record.get("event")
        if event == "start":
            out.start = record
        elif event == "end":
            out.end = record
        elif event == "error":
            out.error = record["error"]
        elif "id" in record:
            out.results[record["id"]] = record
    if out.end is None and out.error is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        out.error = f"runner {exit_status(exit_code)} before finishing the batch: {tail[:300]}"
    return out


def exit_status(exit_code: int) -> str:
    """How the runner ended, in words: a signal named (this host's subprocess reports -N, a
    device's shell 128 + N) instead of a bare -9 or 137, which does not say out of memory."""
    from latbench.runners.tool import signal_death

    died = signal_death(128 - exit_code if exit_code < 0 else exit_code)
    return died or f"exited with {exit_code}"
