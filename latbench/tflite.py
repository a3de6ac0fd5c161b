"""OpSpec or network -> .tflite with litert-torch, laid out as a phone runs it, and run on this host.

Torch is NCHW; TFLite kernels are NHWC. Converted as it is, a torch module gets a
TRANSPOSE at its input and output (and around every channel shuffle), which a phone
app feeding NHWC tensors never runs. So before converting, the module is wrapped to
take and return NHWC and its layout-bound parts (channel shuffle, global average
pool) are rewritten in NHWC form: the converter then cancels every boundary
transpose, and what is timed is the op itself.

The contract for every .tflite made here: 4-D inputs and outputs are NHWC, others
are as torch has them. `run_tflite` takes and returns torch (NCHW) layout, so the
check against torch compares like with like.

litert-torch (the `tflite` extra) is imported only when a model is converted: it
takes seconds to import, and commands that do not convert never pay for it.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

import numpy as np

from latbench.errors import ExportError

if TYPE_CHECKING:
    from latbench.ops import Network, OpSpec

#: Bump when the layout rewrites below change what a converted file contains.
LAYOUT_REVISION = 1
INSTALL_HINT = "pip install -e .[tflite]"
#: Distributions that install `litert_torch`: the release, and the nightly under its own name.
CONVERTER_DISTS = ("litert-torch", "litert-torch-nightly")
#: Loggers that print noise when litert-torch is imported (torchao's optional kernels,
#: a torch deprecation about an enum litert-torch registers).
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def converter_version() -> str:
    """``litert-torch<v>-conv<v>-nhwc<rev>``: the converter, its backend and our layout revision.

    Read from package metadata, so naming the converter does not import it.
    """
    torch_side = _first_version(CONVERTER_DISTS)
    if torch_side is None:
        raise ExportError("litert-torch is not installed, so .tflite models cannot be made",
                          INSTALL_HINT)
    backend = _first_version(("litert-converter",))  # older litert-torch had none of its own
    return f"litert-torch{torch_side}{f'-conv{backend}' if backend else ''}-nhwc{LAYOUT_REVISION}"


def _first_version(dists: tuple[str, ...]) -> str | None:
    """The version of the first of `dists` installed (a nightly installs as another name)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


# ---- layout ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _nhwc_modules():
    """The torch modules of the layout rewrites (defined on first use: torch is a heavy import)."""
    import torch
    from torch import nn

    class ChannelsLastIO(nn.Module):
        """Takes NHWC, runs the NCHW module, returns NHWC when the output is 4-D."""

        def __init__(self, inner: nn.Module, nhwc_output: bool):
            super().__init__()
            self.inner = inner
            self.nhwc_output = nhwc_output

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.inner(x.permute(0, 3, 1, 2))
            return y.permute(0, 2, 3, 1) if self.nhwc_output else y

    class ShuffleNHWC(nn.Module):
        """ChannelShuffle as NHWC code does it: reshape, one TRANSPOSE, reshape. Same values."""

        def __init__(self, groups: int):
            super().__init__()
            self.groups = groups

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c, h, w = x.shape
            y = x.permute(0, 2, 3, 1).reshape(n, h, w, self.groups, c // self.groups)
            return y.transpose(3, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)

    class MeanNHWC(nn.Module):
        """Global average pool over the H and W axes of NHWC. Same values."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 3, 1).mean(dim=(1, 2))

    return ChannelsLastIO, ShuffleNHWC, MeanNHWC


def _rewrite_nhwc(module):
    """`module` with every ChannelShuffle and GlobalAvgPool (the root included) in NHWC form."""
    from latbench.modules import ChannelShuffle, GlobalAvgPool

    _, ShuffleNHWC, MeanNHWC = _nhwc_modules()

    def replacement(m):
        if isinstance(m, ChannelShuffle):
            return ShuffleNHWC(m.groups)
        if isinstance(m, GlobalAvgPool):
            return MeanNHWC()
        return None

    root = replacement(module)
    if root is not None:
        return root
    for name, child in list(module.named_children()):
        new = replacement(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _rewrite_nhwc(child)
    return module


def phone_layout(module, x):
    """(module, sample input) to convert: NHWC at 4-D inputs and outputs, NHWC-form layout ops.

    Computes what `module(x)` computes, with 4-D tensors permuted to NHWC.
    """
    import torch

    ChannelsLastIO, _, _ = _nhwc_modules()
    module = _rewrite_nhwc(module).eval()
    if x.dim() != 4:
        return module, x
    with torch.no_grad():
        out_rank = module(x).dim()
    return ChannelsLastIO(module, nhwc_output=out_rank == 4).eval(), x.permute(0, 2, 3, 1).contiguous()


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


# ---- conversion --------------------------------------------------------------------------

@contextmanager
def _quiet_import() -> Iterator[None]:
    """Hush the chatter of loading the converter and interpreter: progress bars, torch and torchao
    log lines, and native log lines written straight to file descriptor 2 (they would tear
    through the progress bar of `latbench collect`). Errors still surface as exceptions."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # per-conversion INFO lines of the converter
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with _fd2_to_sink():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _fd2_to_sink() -> Iterator[None]:
    """File descriptor 2 into a temporary file meanwhile. A process started with stderr closed
    (`2>&-`, some service managers: sys.stderr is None) has none to hush and converts as it is."""
    import sys
    import tempfile

    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved_fd = os.dup(2)
    except OSError:  # fd 2 closed
        saved_fd = None
    if saved_fd is None:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved_fd, 2)
    finally:
        os.close(saved_fd)


def _converter():
    """The litert_torch module; ExportError naming the extra when it is missing."""
    with _quiet_import():
        try:
            import litert_torch
        except ImportError as exc:
            raise ExportError(f"cannot import litert-torch to make .tflite models ({exc})",
                              INSTALL_HINT) from None
    return litert_torch


def failure_reason(exc: BaseException) -> str:
    """One line out of a converter exception: its type, first line, and the torch op it hit."""
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no message")
    op = re.search(r"target=torch\.ops\.([\w.]+)", text)
    return f"{type(exc).__name__}: {first[:240]}" + (f" (at torch op {op.group(1)})" if op else "")


def convert_module(module, x, path: Path, label: str = "the module") -> None:
    """Convert torch `module` (NCHW, sample input `x`) to a .tflite file at `path` in phone layout."""
    import warnings

    import torch

    litert_torch = _converter()
    module, sample = phone_layout(module.eval(), x)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            edge_model = litert_torch.convert(module, (sample,))
        content = _flatbuffer(edge_model, path)
    except Exception as exc:  # the converter raises anything from AssertionError to jax errors
        raise ExportError(f"litert-torch cannot convert {label}: {failure_reason(exc)}"[:600],
                          "the converter does not support it; `latbench collect` skips this model "
                          "and goes on") from exc
    if content is not None:
        Path(path).write_bytes(content)  # a full disk: OSError, the export's error says so


def _flatbuffer(edge_model, path: Path) -> bytes | None:
    """The converted model's bytes, written by Python and not by the converter's native writer,
    which ends the whole process ("LLVM ERROR: IO failure on output stream") on a full disk.
    An older litert-torch without `model_content` writes `path` itself (None)."""
    if hasattr(edge_model, "model_content"):
        return edge_model.model_content()
    edge_model.export(str(path))
    return None


def export_tflite(item: Union["OpSpec", "Network"], path: Path) -> None:
    """Write the .tflite of an op or a whole network to `path` (weights seeded by its key)."""
    from latbench.export import build, input_shape
    from latbench.modules import example_input

    convert_module(build(item), example_input(input_shape(item)), Path(path), label=item.key)


# ---- running on this host ----------------------------------------------------------------

def _interpreter(path: Path, threads: int = 1):
    with _quiet_import():  # also hushes "Created TensorFlow Lite XNNPACK delegate" on creation
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ExportError("ai-edge-litert is not installed, so .tflite models cannot be checked",
                              INSTALL_HINT) from None
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """Run a .tflite made here on this host: `x` and the result in torch (NCHW) layout."""
    interpreter = _interpreter(path)
    (inp,) = interpreter.get_input_details()
    feed = to_nhwc(np.asarray(x, dtype=inp["dtype"]))
    if tuple(inp["shape"]) != feed.shape:
        raise ExportError(f"{path.name} takes input shape {tuple(inp['shape'])}, not {feed.shape} "
                          "(NHWC of the torch input)", "re-export it: the file is not one latbench made")
    interpreter.set_tensor(inp["index"], feed)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    return to_nchw(interpreter.get_tensor(out["index"]).copy())


def op_names(path: Path) -> list[str]:
    """The builtin ops of a .tflite file in execution order, before delegation (for inspection)."""
    interpreter = _interpreter(path)
    return [d["op_name"] for d in interpreter._get_ops_details() if d["op_name"] != "DELEGATE"]
