"""A fitted predictor on disk: plain files, a manifest with checksums, no pickle.

``$LATBENCH_HOME/predictors/<device>/``:

- ``manifest.json``: format and version, device, runtime and version, measurement settings
  (the protocol), space, feature list, library versions, sha256 of every file;
- ``lut.json``: op key -> measured median, p10, p90, round spread, count;
- ``gbdt.json`` + ``gbdt_<model>_<i>.txt``: GBDT settings, base-model parameters and
  LightGBM text models (``Booster.model_to_string``);
- ``correction.json``: the network-level correction, or null without measured networks;
- ``report.json``, ``predicted_vs_measured.png``: what `latbench fit-predictor` measured.

Loading verifies every checksum and version first; a corrupt or incompatible artifact
raises one `ArtifactError` that names the file and says to re-run fit-predictor.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import time
import uuid
from importlib import metadata
from pathlib import Path

from latbench import home
from latbench.errors import LatbenchError, UsageError, did_you_mean
from predictors.correction import NetworkCorrection
from predictors.features import FEATURE_SETS
from predictors.gbdt import GBDTPredictor
from predictors.latency import LatencyPredictor
from predictors.lut import LUT

FORMAT = "latbench-predictor"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: A device, or one farm unit of it (DEVICE@HOST, see latbench.farm.units): it names a folder.
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class ArtifactError(LatbenchError):
    """A predictor artifact is missing, corrupt or was written by an incompatible version."""


class NoPredictorError(ArtifactError, UsageError):
    """No predictor under the name or folder given: an unknown name (exit code 2, as any)."""


def check_device_name(device: str, what: str = "device name") -> str:
    if not _DEVICE_NAME.match(device or ""):
        raise UsageError(f"bad {what} {device!r}",
                         "use letters, digits, '.', '_' and '-', or DEVICE@HOST for a farm unit "
                         "(it names a folder)")
    return device


def predictor_dir(device: str) -> Path:
    return home.predictors_dir() / check_device_name(device)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("latbench", "lightgbm", "numpy", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(predictor: LatencyPredictor, directory: Path, *, info: dict,
         reports: dict[str, bytes] | None = None) -> Path:
    """Write `predictor` into `directory` (replaced as a whole, never half-written).

    `info` goes into the manifest: device, runtime, runtime_version, settings_hash,
    settings, space and anything else worth knowing about how it was fitted.
    """
    predictor._check_fitted("gbdt_")
    gbdt_meta, models = predictor.gbdt_.to_files()
    files: dict[str, bytes] = {
        "lut.json": _json_bytes(predictor.lut_.to_dict()),
        "gbdt.json": _json_bytes(gbdt_meta),
        "correction.json": _json_bytes(None if predictor.correction_ is None
                                       else predictor.correction_.to_dict()),
    }
    files.update({name: text.encode() for name, text in models.items()})
    reports = dict(reports or {})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        **info,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "predictor": {"correction": predictor.correction, "use_lut": predictor.use_lut},
        "feature_set": predictor.gbdt_.features,
        "feature_names": list(predictor.gbdt_.feature_names_in_),
        "network_correction": predictor.correction_ is not None,
        "versions": library_versions(),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
        "reports": {name: _sha256(data) for name, data in sorted(reports.items())},
    }
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # not mkdtemp, which makes it 700 (others sharing the home could not load it): mkdir lets the
    # umask decide, as for any folder the user makes
    tmp = directory.parent / f".{directory.name}-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir(0o777)
        for name, data in {**files, **reports, MANIFEST: _json_bytes(manifest)}.items():
            (tmp / name).write_bytes(data)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}-old-{int(time.time() * 1e6)}")
            directory.rename(old)
        tmp.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write the predictor to {directory}: {exc.strerror or exc}",
                            "check permissions or set LATBENCH_HOME to a writable directory") from None
    return directory


def fit_command(name: str) -> str:
    """The command that fits the predictor `name` (a device, or a farm unit DEVICE@HOST)."""
    device, sep, _ = name.partition("@")
    return f"latbench fit-predictor --device {device}" + (f" --unit {name}" if sep else "")


def load(directory: Path, device: str | None = None) -> LatencyPredictor:
    """The predictor saved in `directory`, after checking its manifest, checksums and versions."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if device is None:  # loaded by its path: the folder's name need not be a device
        refit = _path_refit_hint(directory)
        if not manifest_path.exists():
            raise NoPredictorError(f"no latbench predictor in {directory} ({manifest_path} does not exist)",
                                "give the folder `latbench fit-predictor --device DEVICE` saved (or a "
                                "copy of it), or latbench:DEVICE")
    else:
        fit = fit_command(device)
        refit = f"re-run `{fit}`"
        if not manifest_path.exists():
            fitted = sorted(m.parent.name for m in directory.parent.glob(f"*/{MANIFEST}"))
            hint = did_you_mean(directory.name, fitted)
            raise NoPredictorError(f"no fitted predictor for device {device!r} ({manifest_path} does not exist)",
                                (hint + " " if hint else "")
                                + (f"fitted: {', '.join(fitted)}; or " if fitted else "") + f"run `{fit}`")
    manifest, manifest_bytes = _read_json(manifest_path, refit)
    if device is None and isinstance(manifest, dict):
        refit = _refit_hint(directory, manifest) or refit
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not a latbench predictor manifest", refit)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{manifest_path} has format version {version}; this latbench reads "
                            f"version {FORMAT_VERSION}", refit + " with this latbench")
    _check_versions(manifest, manifest_path, refit)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{manifest_path} lists no files", refit)
    data: dict[str, bytes] = {}
    for name, digest in files.items():
        path = directory / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"{manifest_path} names a file outside its folder: {name!r}", refit)
        try:
            blob = path.read_bytes()
        except OSError:
            raise ArtifactError(f"predictor file {path} is missing", refit) from None
        if _sha256(blob) != digest:
            raise ArtifactError(f"predictor file {path} is corrupt (its sha256 differs from the manifest)",
                                refit)
        data[name] = blob
    feature_set = manifest.get("feature_set")
    if feature_set not in FEATURE_SETS or list(manifest.get("feature_names", [])) != list(
            FEATURE_SETS[feature_set]):
        raise ArtifactError(f"{manifest_path}: its feature list differs from this latbench's "
                            f"{feature_set!r} features", refit + " with this latbench")
    current = "lut.json"
    try:
        lut = LUT.from_dict(json.loads(data["lut.json"]))
        current = "gbdt.json"
        meta = json.loads(data["gbdt.json"])
        models = {name: data[name].decode() for name in _model_files(meta)}
        current = "the gbdt_*.txt models"
        gbdt = GBDTPredictor.from_files(meta, models)
        current = "correction.json"
        corr = json.loads(data["correction.json"])
        correction = None if corr is None else NetworkCorrection.from_dict(corr)
        current = MANIFEST
        settings = manifest["predictor"]
        predictor = LatencyPredictor(GBDTPredictor(**gbdt.get_params()),
                                     correction=settings["correction"], use_lut=settings["use_lut"])
    except ImportError as exc:  # the files are fine; this Python lacks a library to read them
        if isinstance(exc, ModuleNotFoundError) and exc.name and "." not in exc.name:
            raise ArtifactError(f"cannot load the predictor in {directory}: {exc.name} is not installed",
                                f"pip install {exc.name} (a latbench dependency) in this Python") from None
        raise ArtifactError(f"cannot load the predictor in {directory}: {exc}",
                            "reinstall latbench's dependencies in this Python (pip install -e .)") from None
    except Exception as exc:  # any unreadable part is one error naming the file
        raise ArtifactError(f"cannot read {current} of the predictor in {directory} "
                            f"({type(exc).__name__}: {exc})", refit) from None
    predictor.gbdt_, predictor.lut_, predictor.correction_ = gbdt, lut, correction
    predictor._cache = {}
    predictor.info_ = {k: v for k, v in manifest.items() if k not in ("files", "reports")}
    # Which artifact this is, for results that must name the predictor they were made with:
    # the manifest lists every file's sha256, so its own sha256 pins them all. The bytes parsed
    # above, not a second read: a fit-predictor saving meanwhile swaps the folder.
    predictor.info_ |= {"folder": str(directory.resolve()),
                        "manifest_sha256": _sha256(manifest_bytes)}
    return predictor


def _path_refit_hint(directory: Path) -> str:
    """How to mend a predictor loaded by its path before its manifest says whose it is: its
    folder's name is the device only for a folder fit-predictor saved in the home."""
    name = directory.name
    if _DEVICE_NAME.match(name) and directory.resolve() == predictor_dir(name).resolve():
        return f"re-run `{fit_command(name)}`"
    return (f"re-run `latbench fit-predictor --device DEVICE` for the device it was fitted for, "
            f"then copy the folder it saves to {directory}")


def _refit_hint(directory: Path, manifest: dict) -> str | None:
    """How to mend a predictor loaded by its path: fit the device its manifest names (the
    folder may be a copy with any name), then copy the fitted folder over this one."""
    name = manifest.get("unit") or manifest.get("device")
    if not isinstance(name, str) or not _DEVICE_NAME.match(name):
        return None
    fitted = predictor_dir(name)
    refit = f"re-run `{fit_command(name)}`"
    if directory.resolve() == fitted.resolve():
        return refit
    return f"{refit}, then copy {fitted} to {directory}"


def _model_files(meta: dict) -> list[str]:
    return [f for files in meta["models"].values() for f in files]


def _check_versions(manifest: dict, path: Path, refit: str) -> None:
    written = manifest.get("versions", {}).get("lightgbm", "unknown")
    installed = library_versions()["lightgbm"]
    try:
        if int(written.split(".")[0]) > int(installed.split(".")[0]):
            raise ArtifactError(f"{path} was written with LightGBM {written}; installed is {installed}",
                                f"upgrade lightgbm or {refit}")
    except ValueError:
        pass  # an unknown version string: the model text itself is checked when read


def _read_json(path: Path, refit: str) -> tuple[object, bytes]:
    """The parsed document and the bytes it was parsed from (to hash exactly what was read)."""
    try:
        data = path.read_bytes()
        return json.loads(data), data
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"predictor file {path} is corrupt ({type(exc).__name__})", refit) from None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
