"""What a search leaves behind: the model files of the found network and a JSON result."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from latbench.cli.output import json_text
from latbench.errors import LatbenchError
from latbench.ops import Network

RESULT_FILE = "result.json"


def export_network(network: Network, out_dir: Path) -> dict:
    """arch.onnx and arch.tflite in `out_dir`, each checked against torch by latbench.export.

    TFLite needs the `tflite` extra; without it (or when conversion fails) the entry is
    None and `notes` says why, because a finished search is worth keeping either way.
    """
    from latbench.export import export

    out: dict = {"onnx": None, "tflite": None, "notes": []}
    for fmt in ("onnx", "tflite"):
        target = out_dir / f"arch.{fmt}"
        try:
            shutil.copyfile(export(network, fmt), target)
            out[fmt] = str(target)
        except ImportError as exc:
            out["notes"].append(f"{fmt} skipped: {exc} (pip install -e .[tflite])")
        except LatbenchError as exc:
            if fmt == "onnx":
                raise
            out["notes"].append(f"{fmt} skipped: {exc}")
    return out


def write_json(result: dict, path: Path) -> Path:
    """Write atomically, so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json_text(result, default=_jsonable))
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LatbenchError(f"cannot read search result {path}: {exc}", "run `nas search` to make one") from None


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
