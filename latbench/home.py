"""Where latbench keeps its database, model cache and fitted predictors."""

from __future__ import annotations

import os
import secrets
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
    """The home directory and its model cache, created if needed; a clear error when either
    cannot be written (else every export of a collection fails alike, one op at a time)."""
    home = home_dir()
    for folder, what in ((home, "latbench home"), (model_cache_dir(), "the model cache")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # a name of this process's own: two collections starting at once must not remove
            # each other's probe
            probe = folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise LatbenchError(
                f"cannot write to {what} {folder}: {exc.strerror or exc}",
                "set LATBENCH_HOME to a writable directory" if folder == home else
                f"make {folder} a directory you can write (or remove it), or set LATBENCH_HOME elsewhere",
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
