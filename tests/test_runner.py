"""The bundled Python runner through the local transport, its timing protocol, and the
statistics the host derives from its samples."""

from __future__ import annotations

import ast
import itertools
import json
import os
import sys
import math
import time

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from conftest import running, signal_when  # noqa: E402

from latbench.errors import DeviceError  # noqa: E402
from latbench.measurement import Measurement  # noqa: E402
from latbench.profiles import load_profile  # noqa: E402
from latbench.runners import PYRUNNER_PATH, pyrunner  # noqa: E402
from latbench.runners.base import BatchItem, make_runner  # noqa: E402
from latbench.runners.python import PythonRunner, parse_output  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from latbench.transports import open_transport  # noqa: E402
from latbench.transports.local import LocalTransport  # noqa: E402


@pytest.fixture
def model_files(onnx_cache):
    """Three exported ops of different sizes (from the session cache)."""
    from latbench.export import export

    ops = get_space("fbnet-cifar").ops()
    picked = [ops[0], ops[3], ops[10]]  # stem, fc, a block
    return [export(op, "onnx", cache_dir=onnx_cache) for op in picked]


def open_runner(name: str):
    profile = load_profile(name)
    transport = open_transport(profile)
    transport.connect()
    runner = make_runner(transport, profile)
    return profile, runner


def test_profile_runner_and_transport_are_the_local_python_ones(fast_profile):
    profile, runner = open_runner(fast_profile)
    assert isinstance(runner, PythonRunner)
    assert isinstance(runner.transport, LocalTransport)
    assert runner.transport.python() == sys.executable


def test_info_reports_onnxruntime_and_its_version(fast_profile):
    _, runner = open_runner(fast_profile)
    info = runner.info()
    assert info["runtimes"]["onnxruntime"] == {"package": "onnxruntime", "version": ort.__version__}
    assert info["executable"] == sys.executable
    assert "max_temperature_c" in info["state"]
    assert runner.runtime_version(info) == f"onnxruntime {ort.__version__}"
    assert "max_temperature_c" in runner.state()


def test_a_missing_runtime_is_a_device_error_with_the_install_command(fast_profile):
    _, runner = open_runner(fast_profile)
    with pytest.raises(DeviceError) as info:
        runner.runtime_version({"runtimes": {}, "executable": "/usr/bin/python3"})
    assert "onnxruntime is not installed" in info.value.message
    assert "pip install onnxruntime" in info.value.hint


def test_a_batch_of_three_models_is_measured_in_one_process(fast_profile, model_files):
    profile, runner = open_runner(fast_profile)
    out = runner.run_batch([BatchItem(f"m{i}", p) for i, p in enumerate(model_files)])
    assert out.error is None and out.end is not None
    assert out.start["runtime"] == "onnxruntime"
    assert out.start["runtime_version"] == ort.__version__
    assert out.start["threads"] == 1
    assert list(out.results) == ["m0", "m1", "m2"]  # in the given order
    for rec in out.results.values():
        assert rec["ok"] is True
        assert rec["warmup_runs"] >= profile.protocol.warmup_runs
        m = Measurement(rec["id"], rec["samples_ms"])
        assert profile.protocol.runs <= m.count <= profile.protocol.max_runs
        assert (m.samples_ms > 0).all()
        assert m.p10_ms <= m.median_ms <= m.p90_ms
        assert rec["load_s"] >= 0


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="no CPU affinity here")
def test_cpu_mask_pins_the_runner_and_the_start_event_says_where(make_profile, model_files):
    import os

    core = max(os.sched_getaffinity(0))
    _, runner = open_runner(make_profile("pinned", connection={"cpu_mask": format(1 << core, "x")}))
    out = runner.run_batch([BatchItem("a", model_files[0])])
    assert out.error is None and out.results["a"]["ok"]
    assert out.start["cpus"] == [core]
    _, runner = open_runner(make_profile("unpinned"))
    assert runner.run_batch([BatchItem("a", model_files[0])]).start["cpus"] == sorted(os.sched_getaffinity(0))
    # a core the host does not have: one clear error, nothing measured
    _, runner = open_runner(make_profile("nosuchcore", connection={"cpu_mask": format(1 << 200, "x")}))
    out = runner.run_batch([BatchItem("a", model_files[0])])
    assert not out.results and "cannot pin to cores [200]" in out.error and "cpu_mask" in out.error


def test_a_missing_model_fails_alone_and_the_batch_goes_on(fast_profile, model_files, tmp_path):
    _, runner = open_runner(fast_profile)
    missing = tmp_path / "gone.onnx"
    items = [BatchItem("a", model_files[0]), BatchItem("b", missing), BatchItem("c", model_files[1])]
    out = runner.run_batch(items)
    assert out.error is None and out.end is not None
    assert out.results["b"]["ok"] is False
    assert "gone.onnx" in out.results["b"]["error"]
    assert out.results["a"]["ok"] and out.results["c"]["ok"]
    assert len(out.results["c"]["samples_ms"]) >= 5


def test_protocol_limits_are_honoured_by_the_runner(make_profile, model_files):
    """warm-up count exact when warmup_s is 0; max_runs caps even a long min_time_s."""
    name = make_profile("capped", protocol={"warmup_runs": 4, "warmup_s": 0, "runs": 3,
                                            "min_time_s": 30, "max_runs": 7})
    _, runner = open_runner(name)
    t0 = time.perf_counter()
    out = runner.run_batch([BatchItem("x", model_files[1]), BatchItem("y", model_files[2])])
    assert time.perf_counter() - t0 < 20, "max_runs did not cap the 30 s minimum time"
    for rec in out.results.values():
        assert rec["warmup_runs"] == 4
        assert len(rec["samples_ms"]) == 7


def test_the_local_transport_times_out_with_a_device_error(fast_profile):
    _, runner = open_runner(fast_profile)
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="took longer than 0.5 s"):
        runner.transport.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    assert time.perf_counter() - t0 < 10


def test_a_missing_interpreter_is_a_device_error(make_profile):
    name = make_profile("nopython", python="/nonexistent/python3")
    _, runner = open_runner(name)
    with pytest.raises(DeviceError, match="not found"):
        runner.info()


# ---- the protocol itself (pyrunner.measure), with a model of known duration -------------

class SleepyModel:
    """A 'model' taking `seconds` per run that records when each run started."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.starts: list[float] = []

    def __call__(self) -> None:
        self.starts.append(time.perf_counter())
        time.sleep(self.seconds)


def protocol(**kw) -> dict:
    base = {"warmup_runs": 0, "warmup_s": 0.0, "runs": 1, "min_time_s": 0.0, "max_runs": 1000}
    return base | kw


def test_measure_counts_warmup_and_timed_runs_exactly():
    model = SleepyModel(0.0)
    samples, warm = pyrunner.measure(model, protocol(warmup_runs=3, runs=4))
    assert warm == 3 and len(samples) == 4 and len(model.starts) == 7


def test_measure_warms_up_for_at_least_warmup_s():
    model = SleepyModel(0.002)
    t0 = time.perf_counter()
    samples, warm = pyrunner.measure(model, protocol(warmup_runs=1, warmup_s=0.06, runs=1))
    first_timed = model.starts[warm]
    assert 0.06 <= first_timed - t0 < 0.5
    assert warm > 1 and len(samples) == 1


def test_measure_times_for_at_least_min_time_s_and_samples_are_the_run_time():
    model = SleepyModel(0.003)
    samples, warm = pyrunner.measure(model, protocol(runs=2, min_time_s=0.08))
    assert warm == 0
    assert len(samples) > 2
    # from the first run's start to the last's end (its measured time: under load a 3 ms sleep
    # takes longer), less a millisecond for the runner's own clock reads around the model's
    assert model.starts[-1] + samples[-1] / 1000 - model.starts[0] >= 0.08 - 1e-3
    assert min(samples) >= 3.0 and np.median(samples) < 50  # milliseconds


def test_max_runs_caps_the_timed_runs():
    model = SleepyModel(0.001)
    t0 = time.perf_counter()
    samples, _ = pyrunner.measure(model, protocol(runs=2, min_time_s=30, max_runs=6))
    assert len(samples) == 6 and time.perf_counter() - t0 < 5


class BusyModel:
    """A 'model' that busy-waits `seconds`: nearly constant run times."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.seconds:
            pass


class FakeClock:
    """The clocks `pyrunner.measure` reads, advanced only by the 'model': run times exactly as
    given, whatever else the host is doing (a busy-wait on a loaded 2-core host is preempted
    now and then, and a few inflated samples widen the median's interval)."""

    def __init__(self, monkeypatch):
        self.ns = 0
        monkeypatch.setattr(pyrunner, "time", self)

    def perf_counter_ns(self) -> int:
        return self.ns

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def model(self, durations_s):
        """A 'model' whose runs take `durations_s` in turn (cycled)."""
        durations = itertools.cycle(durations_s)

        def run() -> None:
            self.ns += round(next(durations) * 1e9)
        return run


def test_adaptive_protocol_stops_as_soon_as_the_median_is_known(monkeypatch):
    clock = FakeClock(monkeypatch)
    run = clock.model([0.0005, 0.00051, 0.00049, 0.000502])  # +-2%: the median known at the first check
    samples, _ = pyrunner.measure(run, protocol(runs=20, rel_ci=0.2, max_time_s=30))
    assert len(samples) == 20
    assert sorted(samples)[0] == pytest.approx(0.49) and sorted(samples)[-1] == pytest.approx(0.51)  # ms


def test_adaptive_protocol_gives_up_on_a_noisy_model_at_max_time_s():
    durations = iter([0.0005, 0.01] * 10_000)  # bimodal: the median never settles
    t0 = time.perf_counter()
    samples, _ = pyrunner.measure(lambda: time.sleep(next(durations)),
                                  protocol(runs=5, rel_ci=0.01, max_time_s=0.15))
    elapsed = time.perf_counter() - t0
    assert 0.15 <= elapsed < 2
    assert 5 < len(samples) < 1000


def test_the_runner_refuses_an_unknown_runtime(capsys):
    code = pyrunner.run_batch({"runtime": "tensorrt", "threads": 1, "protocol": protocol(), "items": []})
    assert code == 3
    record = json.loads(capsys.readouterr().out)
    assert record["event"] == "error" and "unknown runtime 'tensorrt'" in record["error"]


def test_the_runner_script_imports_nothing_from_latbench():
    """It is copied to devices that have only python, numpy and a runtime."""
    tree = ast.parse(PYRUNNER_PATH.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "ai_edge_litert",
                                              "tflite_runtime", "tensorflow"}
    assert modules <= allowed, modules - allowed


# ---- reading the runner's output --------------------------------------------------------

def test_parse_output_keeps_finished_results_when_the_runner_dies():
    lines = [
        json.dumps({"event": "start", "runtime": "onnxruntime", "state": {}}),
        "some runtime chatter on stdout",
        json.dumps({"id": "0", "ok": True, "samples_ms": [1.0, 2.0]}),
        json.dumps({"id": "1", "ok": False, "error": "bad model"}),
        '{"id": "2", "ok": true, "samples_ms": [1.0, 2',  # cut off by the crash
    ]
    out = parse_output("\n".join(lines), "Segmentation fault\n", -11)
    assert set(out.results) == {"0", "1"}
    assert out.results["0"]["samples_ms"] == [1.0, 2.0]
    assert out.end is None
    assert "SIGSEGV" in out.error and "Segmentation fault" in out.error


@pytest.mark.parametrize("exit_code", [-9, 137])  # this host's subprocess; a device's shell
def test_a_runner_killed_by_a_signal_is_said_so_not_a_bare_exit_code(exit_code):
    out = parse_output(json.dumps({"event": "start"}), "", exit_code)
    assert out.error.startswith("runner was killed by SIGKILL (signal 9: out of memory?")
    assert parse_output("", "boom\n", 1).error == "runner exited with 1 before finishing the batch: boom"


def test_a_local_runner_killed_by_sigkill_names_the_signal(make_profile, model_files, tmp_path):
    """As the OOM killer ends it: the batch's error says SIGKILL, not "exited with -9"."""
    python = tmp_path / "python-killed"
    python.write_text("#!/bin/sh\nkill -KILL $$\n")
    python.chmod(0o755)
    _, runner = open_runner(make_profile("killed", python=str(python)))
    out = runner.run_batch([BatchItem("m0", model_files[0])])
    assert out.results == {} and "SIGKILL" in out.error and "-9" not in out.error


def test_parse_output_of_a_finished_batch_has_no_error():
    lines = [json.dumps({"event": "start"}), json.dumps({"id": "a", "ok": True, "samples_ms": [1.0]}),
             json.dumps({"event": "end", "state": {"max_temperature_c": 40.0}})]
    out = parse_output("\n".join(lines), "", 0)
    assert out.error is None and out.end["state"]["max_temperature_c"] == 40.0


# ---- Measurement statistics -------------------------------------------------------------

def test_measurement_statistics_equal_numpy_and_hand_values():
    samples = [float(i) for i in range(1, 11)]  # 1..10 ms
    m = Measurement("k", samples)
    assert m.count == 10
    assert m.median_ms == 5.5 == np.median(samples)
    assert m.mean_ms == 5.5
    assert m.p10_ms == pytest.approx(1.9) == np.percentile(samples, 10)  # 1 + 0.1 * 9
    assert m.p90_ms == pytest.approx(9.1) == np.percentile(samples, 90)
    assert m.std_ms == pytest.approx((sum((x - 5.5) ** 2 for x in samples) / 9) ** 0.5)
    assert m.std_ms == pytest.approx(np.std(samples, ddof=1))
    assert m.iqr_ms == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert m.summary() == {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms,
                           "mean_ms": m.mean_ms, "std_ms": m.std_ms, "count": 10}


def test_measurement_of_random_samples_equals_numpy():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(0.0, 0.3, size=257)
    m = Measurement("k", samples)
    assert m.median_ms == pytest.approx(np.median(samples))
    assert m.p10_ms == pytest.approx(np.percentile(samples, 10))
    assert m.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert m.mean_ms == pytest.approx(samples.mean())
    assert m.std_ms == pytest.approx(samples.std(ddof=1))


def test_noisy_flag_follows_iqr_over_median():
    steady = Measurement("k", [0.98, 0.99, 1.0, 1.01, 1.02])  # IQR 0.02 ms on 1 ms
    noisy = Measurement("k", [0.8, 0.9, 1.0, 1.1, 1.2])  # IQR 0.2 ms on 1 ms
    gross = Measurement("k", [0.5, 0.7, 1.0, 1.3, 1.5])  # IQR 0.6 ms on 1 ms
    assert not steady.is_noisy and "WARNING" not in repr(steady)
    assert noisy.is_noisy and noisy.relative_iqr == pytest.approx(0.2)
    assert "noisy" in repr(noisy) and "grossly" not in repr(noisy)
    assert "grossly noisy" in repr(gross)
    assert "Median: 1 ms" in repr(steady) and "5 measurements" in repr(steady)
    assert Measurement("k", [2.0]).std_ms == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_a_measurement_needs_samples(bad):
    with pytest.raises(ValueError, match="non-empty 1-D"):
        Measurement("k", bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_measurement_needs_finite_samples(bad):
    with pytest.raises(ValueError, match="finite samples; got 1 NaN or inf of 3"):
        Measurement("k", [1.0, bad, 2.0])


def test_a_local_tflite_profile_without_the_interpreter_names_the_extra(make_profile):
    from latbench.transports import open_transport

    profile = load_profile(make_profile("tfl", runtime="litert", format="tflite"))
    runner = make_runner(open_transport(profile), profile)
    with pytest.raises(DeviceError) as info:
        runner.runtime_version({"runtimes": {}, "executable": sys.executable})
    assert info.value.hint == "pip install -e .[tflite] (the interpreter and the converter)"


def test_a_local_run_past_its_time_hands_on_what_it_printed(fast_profile):
    from latbench.transports import open_transport

    transport = open_transport(load_profile(fast_profile))
    transport.connect()
    with pytest.raises(DeviceError, match="took longer than 1 s") as info:
        transport.run(["sh", "-c", "echo first; echo second; printf cut; exec sleep 30"], 1)
    assert info.value.partial_stdout == "first\nsecond\n"  # whole lines: the runner keeps those results


def test_a_local_run_that_is_stopped_ends_a_tool_under_timeout_too(fast_profile):
    """GNU timeout (in every batch script) puts the tool in a process group of its own: a run
    cut short must end the whole session, or the tool goes on timing after latbench stopped."""
    from latbench.transports import open_transport

    transport = open_transport(load_profile(fast_profile))
    transport.connect()
    marker = f"7{time.time() % 1000:.4f}"
    with pytest.raises(DeviceError, match="took longer"):
        transport.run(["sh", "-c", f"timeout 60 sleep {marker}"], 1)
    assert not running(f"sleep {marker}")
    with signal_when(lambda: running(f"^sleep {marker}"), settle_s=0.1), \
            pytest.raises(KeyboardInterrupt) as stopped:
        transport.run(["sh", "-c", f"echo done; printf cut; timeout 60 sleep {marker}; echo never"], 30)
    assert not running(f"sleep {marker}")
    assert stopped.value.partial_stdout == "done\n"  # the runner keeps what had finished


def test_a_stopped_local_run_keeps_its_output_when_a_process_that_left_the_session_holds_stdout(
        fast_profile, tmp_path):
    """Killing the session cannot end a process that called setsid: stdout stays open, and
    reading it to the end times out, but what was read by then is still the run's."""
    import signal

    from latbench.transports import open_transport

    transport = open_transport(load_profile(fast_profile))
    transport.connect()
    pid_file = tmp_path / "escaped.pid"
    try:
        with signal_when(lambda: pid_file.exists() and pid_file.read_text().strip(), settle_s=0.1), \
                pytest.raises(KeyboardInterrupt) as stopped:
            transport.run(["sh", "-c", 'echo done; setsid sleep 60 & echo $! > "$1"; sleep 30',
                           "sh", str(pid_file)], 30)
        assert stopped.value.partial_stdout == "done\n"
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_thermal_zones_of_one_type_are_all_kept_and_the_hottest_counts(monkeypatch):
    """Two "acpitz" zones (common on x86 boards): the later one overwrote the hot one, and a hot
    device read as cool was not let cool before it was measured."""
    files = {"/z/thermal_zone0/temp": "85000", "/z/thermal_zone0/type": "acpitz",
             "/z/thermal_zone1/temp": "40000", "/z/thermal_zone1/type": "acpitz",
             "/z/thermal_zone2/temp": "50000", "/z/thermal_zone2/type": "x86_pkg_temp"}
    zones = sorted({path.rsplit("/", 1)[0] for path in files})
    monkeypatch.setattr(pyrunner.glob, "glob", lambda pattern: zones if "thermal" in pattern else [])
    monkeypatch.setattr(pyrunner, "_read", files.get)
    state = pyrunner.device_state()
    assert state["temperatures_c"] == {"acpitz": 85.0, "acpitz (thermal_zone1)": 40.0, "x86_pkg_temp": 50.0}
    assert state["max_temperature_c"] == 85.0


def test_the_ci_stop_waits_for_enough_samples_to_have_an_interval():
    # 2-5 samples span the median only 50-94% of the time: no "+-1%" from two equal runs
    assert pyrunner.median_rel_ci([5.0]) == math.inf and pyrunner.median_rel_ci([5.0] * 5) == math.inf
    assert pyrunner.median_rel_ci([5.0] * pyrunner.MIN_CI_SAMPLES) == 0.0
    samples, _ = pyrunner.measure(BusyModel(0.002), protocol(runs=2, rel_ci=0.05, max_time_s=1))
    assert len(samples) >= pyrunner.MIN_CI_SAMPLES
