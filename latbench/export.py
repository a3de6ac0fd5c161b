"""OpSpec or network -> model file, cached on disk by (key, format, exporter version).

Every exported file is checked once against torch on this host before it is
cached, so a number measured later belongs to the op its key names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Union

from latbench import home
from latbench.errors import ExportError
from latbench.ops import Network, OpSpec

ONNX_OPSET = 17
#: Bump when the modules or the export path change what a file contains.
EXPORT_REVISION = 1

Exportable = Union[OpSpec, Network]


def exporter_tag(fmt: str) -> str:
    """Names the exporter that made a file; part of the cache key and of measurement settings."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]  # without importing torch (seconds)
    if fmt == "onnx":
        return f"onnx{ONNX_OPSET}-torch{torch_version}-r{EXPORT_REVISION}"
    if fmt == "tflite":
        from latbench.tflite import converter_version

        return f"tflite-{converter_version()}-torch{torch_version}-r{EXPORT_REVISION}"
    raise ValueError(f"unknown model format {fmt!r}; use onnx or tflite")


def cache_path(item: Exportable, fmt: str, tag: str, cache_dir: Path | None = None) -> Path:
    digest = hashlib.sha256(item.key.encode()).hexdigest()[:24]
    return (cache_dir or home.model_cache_dir()) / tag / f"{digest}.{fmt}"


def build(item: Exportable):
    from latbench.modules import build_module, build_network

    return build_network(item) if isinstance(item, Network) else build_module(item)


def input_shape(item: Exportable) -> tuple[int, ...]:
    return item.ops[0].input_shape if isinstance(item, Network) else item.input_shape


def export(item: Exportable, fmt: str = "onnx", cache_dir: Path | None = None,
           verify: bool = True) -> Path:
    """The cached model file for `item`, exporting (and checking it against torch) when missing."""
    tag = exporter_tag(fmt)
    path = cache_path(item, fmt, tag, cache_dir)
    if _cached(path):
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            _export_onnx(item, tmp)
        else:
            from latbench.tflite import export_tflite

            export_tflite(item, tmp)
        if verify:
            check_against_torch(item, tmp, fmt)
        _durable_replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot export {item.key} to {fmt}: {type(exc).__name__}: {exc}"[:500]) from exc
    finally:
        with contextlib.suppress(OSError):  # a cache folder that cannot be made has no tmp either
            tmp.unlink(missing_ok=True)
    return path


def _cached(path: Path) -> bool:
    """Whether the cache holds a file at `path`. An empty one is what a power cut leaves of a
    file renamed into place before its data reached the disk: it is made again, not served."""
    try:
        return path.stat().st_size > 0
    except OSError:  # none yet, or no folder to hold one (the export then says why)
        return False


def _durable_replace(tmp: Path, path: Path) -> None:
    """Move `tmp` to `path` only once its data is on disk, so a crash leaves the old name or the
    whole new file (a rename alone may reach the disk before the data: an empty model)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _export_onnx(item: Exportable, path: Path) -> None:
    import onnx
    import torch

    from latbench.modules import example_input

    module = build(item)
    x = example_input(input_shape(item))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: ~100x faster than dynamo for these small graphs,
        # and its output is checked against torch below.
        torch.onnx.export(module, (x,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "latbench.key", item.key
    onnx.save(model, str(path))


def run_onnx(path: Path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_against_torch(item: Exportable, path: Path, fmt: str, rtol: float = 1e-3) -> float:
    """Largest |file - torch| relative to the output's scale; ExportError above `rtol`."""
    import numpy as np
    import torch

    from latbench.modules import example_input

    x = example_input(input_shape(item), seed=1)
    with torch.no_grad():
        expected = build(item)(x).numpy()
    if fmt == "onnx":
        got = run_onnx(path, x.numpy())
    else:
        from latbench.tflite import run_tflite

        got = run_tflite(path, x.numpy())
    if got.shape != expected.shape:
        raise ExportError(f"{item.key}: {fmt} output shape {got.shape} != torch {expected.shape}")
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(got - expected).max()) / scale
    if not err <= rtol:
        raise ExportError(f"{item.key}: {fmt} output differs from torch by {err:.2e} (relative)",
                          "the exporter changed the op; report it with the key")
    return err
