"""Where latbench keeps its database, model cache and fitted predictors."""

from __future__ import annotations

import os
from pathlib import Path

from latbench.errors import LatbenchError


def home_dir() -> Path:
    """`LATBENCH_HOME`, else the XDG data directory (``~/.local/share/latbench``)."""
    env = os.environ.get("LATBENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "latbench"


def writable_home() -> Path:
    """The home directory, created if needed; a clear error when it cannot be written."""
    home = home_dir()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LatbenchError(
            f"cannot write to latbench home {home}: {exc.strerror or exc}",
            "set LATBENCH_HOME to a writable directory",
        ) from None
    return home


def db_path() -> Path:
    return home_dir() / "latbench.db"


def model_cache_dir() -> Path:
    return home_dir() / "models"


def predictors_dir() -> Path:
    return home_dir() / "predictors"


def user_devices_dir() -> Path:
    return home_dir() / "devices"
