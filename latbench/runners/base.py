"""What every runner offers to collection: info, device state, and one call per batch."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from latbench.profiles import DeviceProfile
from latbench.transports.base import Transport


@dataclass
class BatchItem:
    id: str
    path: Path  # the model file on this host; the runner stages it on the device


@dataclass
class BatchOutput:
    """What one runner invocation produced. `results[id]` is ``{"ok": True, "samples_ms": [...]}``
    or ``{"ok": False, "error": "..."}``; ids missing from `results` were not reached."""

    start: dict | None  # runtime, runtime_version, threads, state (device state before)
    results: dict[str, dict] = field(default_factory=dict)
    end: dict | None = None  # state (device state after)
    error: str | None = None  # set when the runner died before finishing
    timed_out: bool = False  # it was killed at the batch's time limit (`error` says so too)
    lost: bool = False  # cut short by a lost connection: the device's runner may have been fine


class Runner(abc.ABC):
    name: str
    #: The protocol limits it applies beyond the minimums (runs, min_time_s): "max_runs" (runs
    #: past it are not kept) and "rel_ci" (the CI stop, up to max_time_s). A tool has its own
    #: stop rule; `describe_timing` claims only these for a table.
    applies: frozenset[str] = frozenset()

    def __init__(self, transport: Transport, profile: DeviceProfile):
        self.transport = transport
        self.profile = profile

    @abc.abstractmethod
    def info(self) -> dict:
        """Runtimes present and their versions (``{"runtimes": {name: {"package", "version"}}}``),
        plus whatever describes the device."""

    @abc.abstractmethod
    def state(self) -> dict:
        """Device state now: at least ``max_temperature_c`` (None when unknown)."""

    @abc.abstractmethod
    def runtime_version(self, info: dict) -> str:
        """"<package> <version>" of the profile's runtime; DeviceError with a fix when absent."""

    @abc.abstractmethod
    def run_batch(self, items: list[BatchItem]) -> BatchOutput:
        """Time every item in one invocation on the device, in the given order."""

    def run_reading(self, argv: list[str], read: Callable[[str, str, int], BatchOutput],
                    cut_short: Callable[[str], str] = lambda text: text) -> BatchOutput:
        """Run a batch command and `read(stdout, stderr, exit_code)` its output. A run cut short
        (a lost connection, the time limit, Ctrl-C) is read from what it had printed, through
        `cut_short`, so the results it finished are kept; nothing printed: the error as it is.
        Ctrl-C still propagates, carrying that reading as `Interrupted.output`."""
        from latbench.errors import DeviceError, Interrupted, stopped_by

        try:
            res = self.transport.run(argv, self.profile.timeout_s)
        except Interrupted as exc:
            if exc.partial_stdout:
                exc.output = read(cut_short(exc.partial_stdout), "", -1)
                exc.output.error = stopped_by(exc)
            raise
        except DeviceError as exc:
            if not exc.partial_stdout:
                raise
            out = read(cut_short(exc.partial_stdout), "", -1)
            out.error, out.timed_out, out.lost = str(exc), exc.timed_out, not exc.timed_out
            return out
        return read(res.stdout, res.stderr, res.exit_code)


#: runner name in a profile -> "module:Class"
RUNNERS = {
    "python": "latbench.runners.python:PythonRunner",
    "benchmark_model": "latbench.runners.benchmark_model:BenchmarkModelRunner",
    "onnxruntime_perf_test": "latbench.runners.onnxruntime_perf_test:OrtPerfTestRunner",
    "trtexec": "latbench.runners.trtexec:TrtexecRunner",
}


def runner_class(name: str) -> type[Runner]:
    import importlib

    module, cls = RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def runner_applies(name: str) -> frozenset[str]:
    """`Runner.applies` of the runner a profile or a stored table names (none for one this
    latbench does not know)."""
    return runner_class(name).applies if name in RUNNERS else frozenset()


def make_runner(transport: Transport, profile: DeviceProfile) -> Runner:
    return runner_class(profile.runner)(transport, profile)
