#!/usr/bin/env python3
"""latbench's bundled Python runner: times a batch of model files in one process.

It is copied to the device as it is and runs there with only the standard
library, numpy and one inference runtime, so it imports nothing from latbench.

    python pyrunner.py info                 # JSON: python, runtimes and versions, device state
    python pyrunner.py state                # JSON: device state only (cheap: no runtime import)
    python pyrunner.py run BATCH.json       # JSON lines: a start event, then one result per model
                                            # (BATCH.json is removed once read: a fresh one per run)

BATCH.json holds ``runtime``, ``threads``, ``options`` (runtime settings),
``protocol`` (warmup_runs, warmup_s, runs, min_time_s, max_runs, max_time_s, rel_ci) and ``items``
(``id``, ``path``) in the order to measure them. Each result carries the raw
samples in milliseconds; statistics are computed by the host, in one place.
A model that fails yields ``{"id": ..., "ok": false, "error": ...}`` and the
batch goes on.
"""

from __future__ import annotations

import glob
import json
import math
import os
import platform
import sys
import time

RUNNER_VERSION = 1


# ---- device state ------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def device_state() -> dict:
    """Temperatures, governors, frequencies and load: what can bias a measurement."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw, kind = _read(zone + "/temp"), _read(zone + "/type") or os.path.basename(zone)
        if raw and raw.lstrip("-").isdigit():
            value = int(raw)
            # zones may share a type (two "acpitz"): one must not hide the other's heat
            name = kind if kind not in temps else f"{kind} ({os.path.basename(zone)})"
            temps[name] = value / 1000.0 if abs(value) > 200 else float(value)
    governors, freqs_khz = {}, {}
    for cpu in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*")):
        name = os.path.basename(cpu)
        gov = _read(cpu + "/cpufreq/scaling_governor")
        cur = _read(cpu + "/cpufreq/scaling_cur_freq")
        if gov:
            governors[name] = gov
        if cur and cur.isdigit():
            freqs_khz[name] = int(cur)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "time": time.time(),
        "temperatures_c": temps,
        "max_temperature_c": max(temps.values()) if temps else None,
        "governors": governors,
        "frequencies_khz": freqs_khz,
        "load_1m": load,
    }


# ---- runtimes ----------------------------------------------------------------------------

def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


#: Where a TFLite interpreter can come from, in the order tried: (label, interpreter module,
#: distributions that may provide it). The label is what measurements record.
_LITE_PACKAGES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", ("ai-edge-litert", "ai-edge-litert-nightly")),
    ("tflite_runtime", "tflite_runtime.interpreter", ("tflite-runtime", "tflite-runtime-nightly")),
    ("tensorflow.lite", "tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
)
_lite_found: list = []  # memo of _litert_version(): a failed `import tensorflow` is slow


def _litert_version() -> tuple[str, str] | None:
    """(interpreter package, version) of the first TFLite interpreter that imports, else None."""
    if _lite_found:
        return _lite_found[0]
    import importlib

    found = None
    for label, module_name, dists in _LITE_PACKAGES:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # absent, or present but broken on this board: try the next
            continue
        top = sys.modules.get(module_name.split(".")[0], module)
        found = (label, getattr(top, "__version__", None) or _dist_version(dists) or "unknown")
        break
    _lite_found.append(found)
    return found


def _dist_version(dists: tuple) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # Python < 3.8 on an old board
        return None
    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def runtimes() -> dict:
    found = {}
    ort = _onnxruntime_version()
    if ort:
        found["onnxruntime"] = {"package": "onnxruntime", "version": ort}
    lite = _litert_version()
    if lite:
        found["litert"] = {"package": lite[0], "version": lite[1]}
    return found


class _OnnxModel:
    """An ONNX Runtime session bound to fixed random inputs (IO binding: least overhead)."""

    def __init__(self, path: str, threads: int, options: dict):
        import numpy as np
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if not options.get("spinning", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.binding = self.session.io_binding()
        for inp in self.session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            x = rng.standard_normal(shape).astype(np.float32)
            self.binding.bind_cpu_input(inp.name, x)
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, "cpu")

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


#: runtime_options each runtime of this runner understands -> type (profiles are checked
#: against it when they load, so a typo fails there and not on every op of a collection).
RUNTIME_OPTIONS = {"onnxruntime": {"spinning": bool}, "litert": {"xnnpack": bool}}
_LITE_OPTIONS = RUNTIME_OPTIONS["litert"]


class _LiteModel:
    """A TFLite interpreter bound to fixed random inputs of the model's declared shapes.

    ``xnnpack: true`` (the default, as on phones) lets the interpreter apply its default
    XNNPACK delegate; ``false`` runs the builtin kernels alone.
    """

    def __init__(self, path: str, threads: int, options: dict):
        import numpy as np

        for key, value in options.items():
            if key not in _LITE_OPTIONS:
                raise ValueError(f"unknown litert runtime option {key!r}; known: {', '.join(_LITE_OPTIONS)}")
            if not isinstance(value, _LITE_OPTIONS[key]):
                raise ValueError(f"litert runtime option {key!r} must be true or false; got {value!r}")
        package = _litert_version()
        if package is None:
            raise RuntimeError("no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime)")
        if package[0] == "ai_edge_litert":
            from ai_edge_litert import interpreter as lite
        elif package[0] == "tflite_runtime":
            from tflite_runtime import interpreter as lite
        else:
            import tensorflow as tf
            lite = tf.lite
        kwargs = {"model_path": path, "num_threads": threads}
        if not options.get("xnnpack", True):
            resolver = getattr(lite, "OpResolverType", None) or getattr(
                getattr(lite, "experimental", None), "OpResolverType", None)
            if resolver is None:
                raise RuntimeError(f"{package[0]} {package[1]} cannot turn XNNPACK off "
                                   "(no OpResolverType); set xnnpack: true or update it")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = lite.Interpreter(**kwargs)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in self.interpreter.get_input_details():
            x = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
            self.interpreter.set_tensor(detail["index"], x)

    def __call__(self) -> None:
        self.interpreter.invoke()


_MODELS = {"onnxruntime": _OnnxModel, "litert": _LiteModel}


# ---- protocol ----------------------------------------------------------------------------

#: Fewest samples whose order statistics give a ~95% interval of the median (exact coverage
#: >= 94.7% from 6 on).
MIN_CI_SAMPLES = 6


def median_rel_ci(samples: list[float]) -> float:
    """Half-width of the ~95% confidence interval of the median (order statistics), relative
    to the median; inf while there are too few samples for one (under MIN_CI_SAMPLES the
    interval's ends fall outside the samples, and the range of 2 to 5 samples covers the median
    only 50-94% of the time, 1 sample never)."""
    ordered = sorted(samples)
    n = len(ordered)
    if n < MIN_CI_SAMPLES:
        return math.inf
    k = 0.98 * math.sqrt(n)  # 1.96 * sqrt(n) / 2
    lo = ordered[max(0, int(math.floor(n / 2 - k)))]
    hi = ordered[min(n - 1, int(math.ceil(n / 2 + k)))]
    median = ordered[n // 2]
    return (hi - lo) / (2 * median) if median > 0 else math.inf


def measure(run, protocol: dict) -> tuple[list[float], int]:
    """Warm up (>= warmup_runs and >= warmup_s), then time single runs: at least `runs` runs and
    `min_time_s`; then, if `rel_ci` > 0, go on until the median is known to within `rel_ci`
    (relative 95% CI half-width) or `max_time_s` has passed; never more than `max_runs`.

    Stopping once the estimate is confident (as torch.utils.benchmark's adaptive_autorange
    does) keeps quiet ops cheap and spends the time on noisy ones.
    Returns (samples in ms, warm-up runs done)."""
    clock = time.perf_counter_ns
    start, warm = time.perf_counter(), 0
    while warm < protocol["warmup_runs"] or time.perf_counter() - start < protocol["warmup_s"]:
        run()
        warm += 1
    runs, min_time_s, max_runs = protocol["runs"], protocol["min_time_s"], protocol["max_runs"]
    max_time_s = protocol.get("max_time_s", math.inf)
    rel_ci = protocol.get("rel_ci", 0.0)
    samples: list[float] = []
    start = time.perf_counter()
    next_check = runs
    while len(samples) < max_runs:
        t0 = clock()
        run()
        samples.append((clock() - t0) / 1e6)
        n = len(samples)
        if n < runs:
            continue
        elapsed = time.perf_counter() - start
        if elapsed < min_time_s:
            continue
        if rel_ci <= 0 or elapsed >= max_time_s:
            break
        if n >= next_check:
            if median_rel_ci(samples) <= rel_ci:
                break
            next_check = n + max(1, n // 5)
    return samples, warm


def pin(wanted: list | None) -> str | None:
    """Run on the cores `wanted` (the profile's cpu_mask), before any runtime starts its
    threads; returns an error message, or None."""
    if not wanted:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return f"cpu_mask is set but this Python ({sys.platform}) cannot pin itself to cores; remove cpu_mask"
    try:
        os.sched_setaffinity(0, [int(c) for c in wanted])
    except (OSError, ValueError) as exc:
        return (f"cannot pin to cores {wanted} ({exc}); this device has cores "
                f"{cpus() or list(range(os.cpu_count() or 1))}: fix connection.cpu_mask")
    return None


def cpus() -> list | None:
    """The cores this process may run on (None where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_batch(batch: dict) -> int:
    runtime = batch["runtime"]
    if runtime not in _MODELS:
        _emit({"event": "error", "error": f"unknown runtime {runtime!r}; this runner knows {sorted(_MODELS)}"})
        return 3
    found = runtimes()
    if runtime not in found:
        hint = "pip install onnxruntime" if runtime == "onnxruntime" else "pip install ai-edge-litert"
        _emit({"event": "error", "error": f"runtime {runtime} is not installed for {sys.executable} ({hint})"})
        return 3
    threads, options, protocol = int(batch["threads"]), batch.get("options", {}), batch["protocol"]
    error = pin(batch.get("cpus"))
    if error:
        _emit({"event": "error", "error": error})
        return 3
    _emit({"event": "start", "runner_version": RUNNER_VERSION, "runtime": runtime, "cpus": cpus(),
           "runtime_package": found[runtime]["package"], "runtime_version": found[runtime]["version"],
           "threads": threads, "python": platform.python_version(),
           # which board it was: a board swapped in at the same address shows in the batch records
           "hostname": platform.node(), "machine": platform.machine(), "state": device_state()})
    model_cls = _MODELS[runtime]
    for item in batch["items"]:
        try:
            t0 = time.perf_counter()
            model = model_cls(item["path"], threads, options)
            load_s = time.perf_counter() - t0
            samples, warm = measure(model, protocol)
            del model
        except Exception as exc:  # one bad model must not end the batch
            _emit({"id": item["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            continue
        _emit({"id": item["id"], "ok": True, "samples_ms": samples, "warmup_runs": warm,
               "load_s": round(load_s, 4)})
    _emit({"event": "end", "state": device_state()})
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "info":
        _emit({"runner_version": RUNNER_VERSION, "python": platform.python_version(),
               "executable": sys.executable, "machine": platform.machine(),
               "system": platform.platform(), "cpu_count": os.cpu_count(),
               "runtimes": runtimes(), "state": device_state()})
        return 0
    if len(argv) >= 1 and argv[0] == "state":
        _emit(device_state())
        return 0
    if len(argv) == 2 and argv[0] == "run":
        with open(argv[1]) as fh:
            batch = json.load(fh)
        try:  # each batch file is written once (a fresh name per run): do not let them pile up
            os.remove(argv[1])
        except OSError:
            pass
        return run_batch(batch)
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
