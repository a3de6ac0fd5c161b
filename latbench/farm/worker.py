"""The agent side of one unit: a Ray actor on the unit's host that holds its device connection
and runner, and measures the batches the head sends it.

It reads the unit's profile on its own host (the file its agent registered), keeps the models
it is sent in a cache on that host by file name, and returns every batch's output as plain
data; the head stores it. It keeps no store of its own.

Ctrl-C or SIGTERM on the head stops a batch the way it stops one on a single device: the head
has `stop_batch` signal the worker, whose handler raises KeyboardInterrupt inside the running
batch (an actor's tasks run on its main thread), the transport ends the run on the device and
the batch returns what it had finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from latbench import home
from latbench.errors import DeviceError, LatbenchError
from latbench.farm.units import registered_profile
from latbench.transports.base import sha256_file

#: "<exporter tag>/<file>", as the head's model cache names a model file
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

#: what stopped the head -> the signal that asks a unit's worker to stop its batch in flight
STOP_SIGNALS = {"Ctrl-C": signal.SIGUSR1, "SIGTERM": signal.SIGUSR2}

#: a worker's process title while it measures (Ray names a process for the method it runs)
_MEASURING_TITLE = b"ray::UnitWorker.run_batch"


def model_cache_dir() -> Path:
    """Where an agent host keeps the model files heads sent it."""
    return home.home_dir() / "farm" / "models"


def worker_pid_file(unit: str) -> Path:
    """Where the unit's worker on this host writes its pid when it starts: Ray may restart it
    under a new pid the head has not heard of yet, and the head's stop must still reach it."""
    return home.home_dir() / "farm" / "workers" / f"{unit}.pid"


class UnitWorker:
    """One unit's device session (created by the head as a Ray actor that needs the unit's
    resource, so it runs on the unit's host and holds the unit while the collection lasts)."""

    def __init__(self, unit: str, trust_new_host: bool = False):
        self.unit = unit
        self.trust_new_host = trust_new_host  # the head's `collect --trust-new-host`
        self.collector = None  # a store-less Collector: its device connection, runner, thermal wait
        self.profile = None
        self.profile_path = registered_profile(unit)
        self.reconnect = False
        self.verified: set[str] = set()
        self._measuring = False
        self._stopped_by = ""  # set by the stop handler: Ray may raise a bare KeyboardInterrupt of its own
        if threading.current_thread() is threading.main_thread():  # where Ray runs an actor
            for by, sig in STOP_SIGNALS.items():
                signal.signal(sig, self._stop_handler(f"{by} on the head"))
        _write_pid_file(worker_pid_file(unit))

    def _stop_handler(self, by: str) -> Callable[[int, object], None]:
        def handler(signum, frame):
            if self._measuring:  # between batches there is nothing to stop
                self._stopped_by = by
                raise KeyboardInterrupt(by)
        return handler

    def _load(self):
        """The unit's profile, read on this host (once: the head compared its settings)."""
        from latbench.profiles import parse_profile

        if self.profile_path is None:
            raise DeviceError(f"no agent on {socket.gethostname()} serves unit {self.unit}",
                              f"start it there: latbench farm agent --address HEAD:6379 --unit {self.unit}")
        if self.profile is None:
            self.profile = parse_profile(Path(self.profile_path))
        return self.profile

    def _open(self):
        from latbench.collect import Collector

        self._load()
        if self.collector is None:
            # no store here; the lock is taken per batch (run_batch), not for the agent's life
            collector = Collector(self.profile, None, lock=False)  # type: ignore[arg-type]
            if self.trust_new_host:  # never turns off a profile's trust_unknown_host
                collector.transport.trust_new_host = True
            collector.__enter__()
            self.collector = collector
        elif self.reconnect:
            self.collector.reconnect()
            self.reconnect = False
        return self.collector

    def describe(self, exporter: str) -> dict:
        """Who and what this unit is: host, profile, settings (with the head's exporter), runtime."""
        import ray

        facts = {"unit": self.unit, "hostname": socket.gethostname(), "pid": os.getpid(),
                 "node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                 "profile": self.profile_path, "error": None}
        try:
            collector = self._open()
            info = collector.runner.info()
            settings = self.profile.settings(exporter)
            facts.update(settings=settings, settings_hash=self.profile.settings_hash(settings),
                         runner_info=info, runtime_label=collector.runner.runtime_version(info),
                         transport=self.profile.transport)
        except LatbenchError as exc:
            facts["error"] = str(exc)
        return facts

    def run_batch(self, items: list[tuple[str, str, str]], models: dict) -> dict:
        """Measure one batch: `items` are (batch id, model file name, sha256), `models` maps
        file names to Ray object refs of their bytes (fetched only when not cached here)."""
        from latbench.collect import Report
        from latbench.locks import device_lock
        from latbench.runners.base import BatchItem, BatchOutput

        started = time.time()
        temp, ended = None, []
        try:
            self._measuring = True  # inside the try: a stop from here on is caught below
            paths = {name: self._model(name, sha, models) for _, name, sha in items}
            # Units of one piece of hardware (local and local-tflite on one host) take turns: the
            # same lock, held for one batch, its reconnect (which runs commands on the device),
            # cooling wait and temperature probe included.
            with device_lock(self._load(), wait_s=self.profile.timeout_s):
                collector = self._open()
                temp = collector.wait_until_cool(Report())
                started = time.time()
                output = collector.runner.run_batch([BatchItem(bid, paths[name]) for bid, name, _ in items])
        except (LatbenchError, OSError) as exc:
            output = BatchOutput(start=None, error=str(exc))
        except KeyboardInterrupt as exc:  # stop_batch: the head was stopped; keep what finished
            output = getattr(exc, "output", None) or BatchOutput(start=None)
            output.error = f"stopped by {self._stopped_by or 'Ctrl-C'}"  # the handler's reason
        finally:
            self._measuring, self._stopped_by = False, ""
            if self.collector is not None:  # runs a worker killed outright (and Ray restarted) left timing
                ended = self.collector.take_ended_runs()
        if output.error is not None:
            self.reconnect = True  # as the single-device loop does before its next attempt
        return {"unit": self.unit, "pid": os.getpid(), "started": started, "temperature_c": temp,
                "ended_runs": ended, "output": dataclasses.asdict(output)}

    def _model(self, name: str, sha: str, models: dict) -> Path:
        """The cached file for `name`, written from the head's bytes when missing or different."""
        import ray

        if not _MODEL_NAME.fullmatch(name) or ".." in name:
            raise DeviceError(f"refusing model file name {name!r} from the head")
        path = model_cache_dir() / name
        if name in self.verified and path.exists():
            return path
        if not (path.exists() and sha256_file(path) == sha):
            data = ray.get(models[name])
            if hashlib.sha256(data).hexdigest() != sha:
                raise DeviceError(f"model {name} arrived damaged (checksum differs)")
            _write_whole(path, data)
        self.verified.add(name)
        return path


def _write_whole(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: another worker or a stop task may read it meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_pid_file(path: Path) -> None:
    try:
        _write_whole(path, f"{os.getpid()}\n".encode())
    except OSError:  # a home it cannot write: the head's stop falls back to the pid it knows
        pass


def stop_batch(unit: str, pid: int, by: str) -> bool:
    """Ask `unit`'s worker to stop the batch it measures (`by`: a key of STOP_SIGNALS). Run as
    a Ray task on the unit's node. The worker is the pid in its pid file (the one Ray started
    last), else `pid`, the one the head last heard from. Only a worker measuring is signalled:
    a stale pid may name another process. False: nothing was signalled."""
    try:
        pid = int(worker_pid_file(unit).read_text().strip())
    except (OSError, ValueError):
        pass
    if not _is_measuring_worker(pid):
        return False
    os.kill(pid, STOP_SIGNALS[by])
    return True


def _is_measuring_worker(pid: int) -> bool:
    """Whether process `pid` is a unit worker in a batch (by the title Ray gives it)."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read()
        except OSError:  # gone
            return False
    else:  # macOS
        title = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True).stdout.strip()
    return title.startswith(_MEASURING_TITLE)
