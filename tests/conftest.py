"""Shared fixtures: a private LATBENCH_HOME, a fast local device profile, a warm model cache.

Every test that touches LATBENCH_HOME gets its own temporary one, so tests never see
each other's database, profiles or model files.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

# One torch thread: the test host has 2 cores shared by several pytest processes, and
# oversubscribed intra-op threads make the small forward passes here ~5x slower. Set before
# anything imports torch; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A shell starts a background job (`.ci/run &`, nohup) with SIGINT (and SIGHUP) ignored, and every
# process it starts inherits the ignore: the Ctrl-C tests' collections, and the shells the ADB
# peer hangs up, then never stopped. A handler of our own is reset to the default by exec, so
# children get the signals back while this process still does not die of a hang-up.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda signum, frame: None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_report_header(config) -> str:
    """Tests of the predictors, import and search on real devices' data skip without it: say
    so at the top, where a quiet skip of dozens of tests would otherwise go unseen."""
    if (SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv").exists():
        return f"shared data: {SHARED_DATA}"
    return f"shared data: {_MISSING_DATA}"


_MISSING_DATA = (f"MISSING at {SHARED_DATA}; the tests that use real devices' latencies skip "
                 "(put the shared folder beside the checkout)")


def pytest_terminal_summary(terminalreporter) -> None:
    """The same, at the end, where `pytest -q` (the README's command) shows it."""
    if not (SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv").exists():
        terminalreporter.write_line(f"shared data: {_MISSING_DATA}", yellow=True)

#: The fast protocol of the `fast_profile` device: enough to exercise every code path.
FAST_PROTOCOL = {"warmup_runs": 2, "warmup_s": 0, "runs": 5, "min_time_s": 0, "max_runs": 50,
                 "rounds": 2, "batch_size": 8}
FAST_PROFILE_NAME = "test-local"
#: How many ops of fbnet-cifar (and seed-0 networks) the session model cache holds.
CACHED_OPS = 16
CACHED_NETWORKS = 2


# Collections lock the hardware they measure in a folder shared by every LATBENCH_HOME of this
# user (latbench.locks); the tests get their own, so a real collection here does not fail them.
os.environ["LATBENCH_LOCK_DIR"] = tempfile.mkdtemp(prefix="latbench-test-locks-")


def running(pattern: str) -> list[str]:
    """Pids of the processes on this host (also the test sshd's board and the adb peer's phone)
    whose command line matches `pattern` (pgrep -f): a run surely started, or its leftovers."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


def wait_for(predicate, timeout_s: float = 30, what: str = "condition"):
    """Poll `predicate` until it returns something true (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def python_that_hangs_once(folder: Path, marker: str) -> Path:
    """A `python` for a profile: the real one, except that the first batch run (`python
    pyrunner.py run FILE`) hangs in `sleep MARKER` under `timeout`, as a tool timing on (in a
    process group of its own, as batch scripts run tools)."""
    started, python = folder / "started", folder / "python-that-hangs-once"
    python.write_text(f"""#!/bin/sh
if [ "$2" = run ] && [ ! -e {shlex.quote(str(started))} ]; then
  touch {shlex.quote(str(started))}; exec timeout 120 sleep {shlex.quote(marker)}
fi
exec {shlex.quote(sys.executable)} "$@"
""")
    python.chmod(0o755)
    return python


def collect_in_a_process(profile_path: Path, db: Path, cache_dir: Path, ops: slice) -> subprocess.Popen:
    """A collection of fbnet-cifar's `ops` in a process of its own (one a test can kill outright)."""
    script = f"""import sys
sys.path[:0] = {sys.path!r}
from pathlib import Path
from latbench.collect import Collector
from latbench.profiles import parse_profile
from latbench.spaces.fbnet import FBNetSpace
from latbench.store import Store
with Store(Path({str(db)!r})) as store:
    with Collector(parse_profile(Path({str(profile_path)!r})), store, cache_dir=Path({str(cache_dir)!r})) as col:
        col.run(col.plan(FBNetSpace("cifar").ops()[{ops.start}:{ops.stop}]))
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def listed_runs(profile) -> list[dict]:
    """The runs the journal beside `profile`'s hardware lock lists (latbench.transports.run_journal)."""
    import json

    from latbench.locks import lock_path

    path = lock_path(profile).with_suffix(".runs")
    return json.loads(path.read_text()) if path.exists() else []


def hung_run_timing(marker: str, profile, proc: subprocess.Popen) -> list[str]:
    """Wait until the hanging run of `python_that_hangs_once` times (`timeout` and its sleep) and
    the journal lists it; the pids of the two. Fails when `proc`, the collection, ended first."""
    def ready():
        assert proc.poll() is None, "the collection ended before its run hung"
        pids = running(f"sleep {marker}")
        return pids if len(pids) == 2 and listed_runs(profile) else None
    return wait_for(ready, 120, "the collection's run to hang")


@contextlib.contextmanager
def signal_when(ready: Path | Callable[[], bool], sig: int = signal.SIGINT, *, settle_s: float = 0.0,
                timeout_s: float = 60.0):
    """Send `sig` (Ctrl-C) to this process once `ready()` holds (a path: once it exists), then
    `settle_s` later, so output already printed reaches the client: a run is interrupted when
    it surely runs, not after a fixed delay that a slow host outlasts. Yields the list the
    signal's time.monotonic() is put in. Leaving the block cancels a signal not yet sent, so
    none lands in a later test."""
    check = ready.exists if isinstance(ready, Path) else ready
    cancelled, sending, sent, missed = threading.Event(), threading.Lock(), [], []

    def wait_then_signal() -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while not cancelled.is_set() and not check():
                if time.monotonic() >= deadline:  # sent anyway, so the run does not hang; then failed
                    missed.append(f"{ready!r} did not hold within {timeout_s:g} s")
                    break
                time.sleep(0.02)
        except Exception as exc:
            missed.append(f"{ready!r} raised {exc!r}")
        cancelled.wait(settle_s)
        with sending:
            if not cancelled.is_set():
                sent.append(time.monotonic())
                os.kill(os.getpid(), sig)

    thread = threading.Thread(target=wait_then_signal, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        with sending:
            cancelled.set()
        thread.join(5)
    if missed:
        pytest.fail(f"signal_when: {missed[0]}: the signal did not come when the run was there")


@pytest.fixture
def latbench_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LATBENCH_HOME for one test (set in the environment, so subprocesses see it)."""
    home = tmp_path / "latbench-home"
    home.mkdir()
    monkeypatch.setenv("LATBENCH_HOME", str(home))
    monkeypatch.delenv("LATBENCH_DEBUG", raising=False)
    yield home


def write_profile(home: Path, name: str, **fields) -> Path:
    """Write a device profile as $LATBENCH_HOME/devices/<name>.yaml; `fields` override the fast
    local defaults (a `protocol` dict is merged into the fast protocol)."""
    data = {"name": name, "description": "fast profile for tests", "transport": "local",
            "runner": "python", "runtime": "onnxruntime", "format": "onnx", "threads": 1,
            "timeout_s": 120}
    protocol = dict(FAST_PROTOCOL, **fields.pop("protocol", {}))
    data.update(fields)
    data["protocol"] = protocol
    path = home / "devices" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def fast_profile(latbench_home: Path) -> str:
    """Name of a fast local profile (1 thread, 2+5 runs, 2 rounds, batches of 8) in the test home."""
    write_profile(latbench_home, FAST_PROFILE_NAME)
    return FAST_PROFILE_NAME


@pytest.fixture
def make_profile(latbench_home: Path):
    """Factory: make_profile(name, **fields) writes a fast local profile with overrides."""
    def make(name: str, **fields) -> str:
        write_profile(latbench_home, name, **fields)
        return name
    return make


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding the first CACHED_OPS ops of fbnet-cifar and CACHED_NETWORKS seed-0
    networks, exported once per session (exporting is the slow part of a collection)."""
    from latbench.export import export
    from latbench.spaces import get_space

    cache = tmp_path_factory.mktemp("onnx-cache")
    space = get_space("fbnet-cifar")
    for op in space.ops()[:CACHED_OPS]:
        export(op, "onnx", cache_dir=cache)
    for net in space.sample_networks(CACHED_NETWORKS, seed=0):
        export(net, "onnx", cache_dir=cache)
    return cache


@pytest.fixture
def warm_home(latbench_home: Path, onnx_cache: Path) -> Path:
    """`latbench_home` with the session's exported models already in its model cache."""
    shutil.copytree(onnx_cache, latbench_home / "models")
    return latbench_home


def run_cli(*args: str, env_home: Path | None = None, timeout_s: float = 120,
            **kwargs) -> subprocess.CompletedProcess:
    """Run `latbench ARGS` as a real subprocess (python -m latbench) with this interpreter."""
    env = dict(os.environ)
    if env_home is not None:
        env["LATBENCH_HOME"] = str(env_home)
    env.pop("LATBENCH_DEBUG", None)
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "latbench", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, **kwargs)


@pytest.fixture
def latbench_cli(latbench_home: Path):
    """latbench_cli(*args, **kw): run `latbench ARGS` as a subprocess against the test home."""
    def call(*args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env_home", latbench_home)
        return run_cli(*args, **kwargs)
    return call
