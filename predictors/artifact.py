"""A fitted predictor on disk: plain files, a manifest with checksums, no pickle.

``$LATBENCH_HOME/predictors/<device>/``:

- ``manifest.json``: format and version, device, runtime and version, measurement settings
  (the protocol), space, feature list, library versions, sha256 of every file, the predictor
  settings used at predict time with their own sha256 (``predictor_sha256``), and an id of the
  save that wrote it (no two saves write the same manifest);
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
    save_id = uuid.uuid4().hex
    settings = {"correction": predictor.correction, "use_lut": predictor.use_lut}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        **info,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # a load that finds the manifest's bytes unchanged knows no save replaced the folder
        # meanwhile, even two saves of the same predictor within created_at's second
        "save_id": save_id,
        "predictor": settings,
        # use_lut changes every prediction, and no file checksum covers the manifest itself
        "predictor_sha256": _settings_sha256(settings),
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
    tmp = directory.parent / f".{directory.name}-{save_id[:12]}"
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


#: A load that overlaps a save of the same folder may read the manifest of one and files of the
#: other, or find no folder between save's two renames: it tries again this often, waiting this
#: long more each time (half a second in all).
_TORN_RETRIES = 10
_TORN_WAIT_S = 0.01
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Torn(Exception):
    """A load failed in a way a save swapping the folder meanwhile explains: `error` is what to
    report unless the manifest (`seen`: its bytes, None if there was none) changed."""

    def __init__(self, error: ArtifactError, seen: bytes | None):
        super().__init__(error)
        self.error, self.seen = error, seen


def load(directory: Path, device: str | None = None) -> LatencyPredictor:
    """The predictor saved in `directory`, after checking its manifest, checksums and versions.

    A load that overlaps a save of the same folder gets the old or the new predictor: a missing
    file, a checksum that differs or a missing folder is reported only once the manifest is the
    one read (and no save of the folder is half done), else it loads again."""
    directory = Path(directory)
    for attempt in range(_TORN_RETRIES + 1):
        try:
            return _load(directory, device)
        except _Torn as torn:
            error, seen = torn.error, torn.seen
        if attempt == _TORN_RETRIES or not _swapped(directory, seen):
            break
        time.sleep(_TORN_WAIT_S * (attempt + 1))
    raise error


def _swapped(directory: Path, seen: bytes | None) -> bool:
    """Whether a save replaced `directory` since its manifest was read as `seen` (each save
    writes another manifest: its save_id), or is replacing it now (the old folder renamed away,
    the new one not yet in)."""
    try:
        now = (directory / MANIFEST).read_bytes()
    except OSError:
        now = None
    if now != seen:
        return True
    if now is not None:
        return False
    prefix = f".{directory.name}-"  # save's temporary and old folders
    try:
        return any(p.name.startswith(prefix) for p in directory.parent.iterdir())
    except OSError:
        return False


def _load(directory: Path, device: str | None) -> LatencyPredictor:
    manifest_path = directory / MANIFEST
    if device is None:  # loaded by its path: the folder's name need not be a device
        refit = _path_refit_hint(directory)
        if not manifest_path.exists():
            raise _Torn(NoPredictorError(
                f"no latbench predictor in {directory} ({manifest_path} does not exist)",
                "give the folder `latbench fit-predictor --device DEVICE` saved (or a copy of it), "
                "or latbench:DEVICE"), None)
    else:
        fit = fit_command(device)
        refit = f"re-run `{fit}`"
        if not manifest_path.exists():
            fitted = sorted(m.parent.name for m in directory.parent.glob(f"*/{MANIFEST}")
                            if not m.parent.name.startswith("."))  # not a save's temporary folder
            hint = did_you_mean(directory.name, fitted)
            raise _Torn(NoPredictorError(
                f"no fitted predictor for device {device!r} ({manifest_path} does not exist)",
                (hint + " " if hint else "")
                + (f"fitted: {', '.join(fitted)}; or " if fitted else "") + f"run `{fit}`"), None)
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as exc:  # the folder renamed away since: a save
        raise _Torn(ArtifactError(f"predictor file {manifest_path} is corrupt ({type(exc).__name__})",
                                  refit), None) from None
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"predictor file {manifest_path} is corrupt ({type(exc).__name__})",
                            refit) from None
    if device is None and isinstance(manifest, dict):
        refit = _refit_hint(directory, manifest) or refit
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not a latbench predictor manifest", refit)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ArtifactError(f"{manifest_path} has format version {version}; this latbench reads "
                            f"version {FORMAT_VERSION}", refit + " with this latbench")
    _check_versions(manifest, manifest_path, refit)
    _check_manifest(manifest, manifest_path, refit)
    fitted_for = manifest.get("unit") or manifest.get("device")
    if device is not None and isinstance(fitted_for, str) and fitted_for != device:
        # a folder copied under another device's name: a search would optimise for the wrong one
        raise ArtifactError(f"the predictor in {directory} was fitted for device {fitted_for!r}, "
                            f"not {device!r}",
                            f"use latbench:{fitted_for}, or run `{fit_command(device)}`")
    data: dict[str, bytes] = {}
    for name, digest in manifest["files"].items():
        path = directory / name
        try:
            blob = path.read_bytes()
        except OSError:
            raise _Torn(ArtifactError(f"predictor file {path} is missing", refit), manifest_bytes) from None
        if _sha256(blob) != digest:
            raise _Torn(ArtifactError(f"predictor file {path} is corrupt (its sha256 differs from the "
                                      f"manifest)", refit), manifest_bytes) from None
        data[name] = blob
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
    versions = manifest.get("versions", {})
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise ArtifactError(f"{path}: its 'versions' is not a table of library versions", refit)
    written = versions.get("lightgbm", "unknown")
    installed = library_versions()["lightgbm"]
    try:
        if int(written.split(".")[0]) > int(installed.split(".")[0]):
            raise ArtifactError(f"{path} was written with LightGBM {written}; installed is {installed}",
                                f"upgrade lightgbm or {refit}")
    except ValueError:
        pass  # an unknown version string: the model text itself is checked when read


def _check_manifest(manifest: dict, path: Path, refit: str) -> None:
    """The manifest's files, features and predictor settings are what save() writes."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{path} lists no files", refit)
    for name, digest in files.items():
        if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            raise ArtifactError(f"{path} names a file outside its folder: {name!r}", refit)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ArtifactError(f"{path}: its 'files' entry for {name} is not a sha256 ({digest!r})",
                                refit)
    for name in ("lut.json", "gbdt.json", "correction.json"):
        if name not in files:
            raise ArtifactError(f"{path}: its 'files' does not list {name}", refit)
    feature_set, names = manifest.get("feature_set"), manifest.get("feature_names")
    if not isinstance(feature_set, str):
        raise ArtifactError(f"{path}: its 'feature_set' is not the name of a feature set", refit)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"{path}: its 'feature_names' is not a list of feature names", refit)
    if feature_set not in FEATURE_SETS or names != list(FEATURE_SETS[feature_set]):
        raise ArtifactError(f"{path}: its feature list differs from this latbench's "
                            f"{feature_set!r} features", refit + " with this latbench")
    settings = manifest.get("predictor")
    if (not isinstance(settings, dict)
            or settings.get("correction") not in LatencyPredictor._constraints["correction"]
            or not isinstance(settings.get("use_lut"), bool)):
        raise ArtifactError(f"{path}: its 'predictor' is not a table of predictor settings "
                            f"(correction, use_lut)", refit)
    _check_settings_sha256(manifest, settings, path, refit)


def _settings_sha256(settings: dict) -> str:
    """sha256 of the predictor settings as save() writes them (sorted keys: one byte string)."""
    return _sha256(_json_bytes(settings))


def _check_settings_sha256(manifest: dict, settings: dict, path: Path, refit: str) -> None:
    """The manifest's `predictor` block is what save() wrote: the files' checksums do not
    cover it, and an edited use_lut would silently change every prediction. A manifest
    without `predictor_sha256` was saved before it existed: loaded as before, its settings
    checked for type only, since refusing it would make every older predictor unusable."""
    digest = manifest.get("predictor_sha256")
    if digest is None:
        return
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ArtifactError(f"{path}: its 'predictor_sha256' is not a sha256 ({digest!r})", refit)
    if _settings_sha256(settings) != digest:
        raise ArtifactError(f"{path}: its 'predictor' settings differ from their sha256 "
                            f"(predictor_sha256): the manifest was edited or is corrupt", refit)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
