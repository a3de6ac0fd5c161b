"""One collection per physical device at a time: two runs on one device time each other's
load, and both would store what they measured (the store keeps the first row of a key and
round). Profiles that reach the same hardware (`local` and `local-tflite`; two profiles of one
board) share a lock, and so do runs with different LATBENCH_HOMEs (a benchmark's temporary
home, a second store): the locks live in one folder per user of this host."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from latbench.errors import LatbenchError

_held: dict[Path, int] = {}  # the lock files this process holds -> the descriptor it holds each by


class HardwareBusy(LatbenchError):
    """Another process measures this hardware; `holder` says which ("latbench pid N, device D")."""

    def __init__(self, message: str, hint: str, holder: str):
        super().__init__(message, hint)
        self.holder = holder


def lock_dir() -> Path:
    """`LATBENCH_LOCK_DIR`, else one folder per user in the host's temporary directory."""
    import tempfile

    env = os.environ.get("LATBENCH_LOCK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"latbench-locks-{os.getuid()}"


def lock_path(profile, directory: Path | None = None) -> Path:
    """The lock file of the hardware `profile` measures."""
    return (directory or lock_dir()) / f"{hardware_name(profile)}.lock"


def hardware_name(profile) -> str:
    """The hardware a profile measures: this host, an SSH host and port, an adb address or
    serial."""
    c = profile.connection
    if profile.transport == "ssh":
        name = f"ssh-{c.get('host', '')}-{c.get('port', 22)}"
    elif profile.transport == "adb" and c.get("usb"):  # the transport connects over USB then
        name = f"adb-usb-{c.get('serial') or 'any'}"
    elif profile.transport == "adb" and c.get("address"):
        from latbench.transports.adb import split_address

        host, port = split_address(str(c["address"]), profile.source or profile.name)
        name = f"adb-{host}-{port}"  # "10.0.0.5" and "10.0.0.5:5555" are one phone
    elif profile.transport == "adb":
        name = f"adb-{c.get('serial') or 'usb'}"
    else:
        name = "this-host"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@contextmanager
def device_lock(profile, directory: Path | None = None, wait_s: float = 0.0) -> Iterator[None]:
    """Hold `<lock_dir>/<hardware>.lock` (an advisory flock, freed by the kernel when this
    process ends, however it ends), waiting up to `wait_s` for it, or raise a LatbenchError
    naming the holder."""
    import time

    directory = directory or lock_dir()
    path = lock_path(profile, directory)
    try:
        _own_folder(directory)
        # never through a link: in a shared /tmp, someone could point it at a file of ours
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600), "r+")
    except OSError as exc:
        raise LatbenchError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                            "set LATBENCH_LOCK_DIR to a folder of yours") from None
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another latbench process"
                raise HardwareBusy(busy_message(profile, holder),
                                   "wait for that collection to finish: two at once would time each "
                                   "other's load", holder)
            time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"latbench pid {os.getpid()}, device {profile.name}")
        handle.flush()
        _held[path] = handle.fileno()
        yield
    finally:
        if _held.get(path) == handle.fileno():  # not a refused second try of this process
            del _held[path]
        handle.close()


def held_lock_path(profile) -> Path | None:
    """The lock file of `profile`'s hardware if this process holds it (and it is still the file
    at that path: one removed meanwhile, a /tmp cleaner say, would let another process take a
    new one), else None. Only a holder may end the runs others left (`transports.run_journal`)."""
    name = lock_path(profile, Path()).name
    for path, fd in _held.items():
        if path.name == name:
            try:
                held, there = os.fstat(fd), os.stat(path)
            except OSError:
                return None
            return path if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino) else None
    return None


def busy_message(profile, holder: str) -> str:
    return f"the hardware of device {profile.name!r} ({hardware_name(profile)}) is being measured already, by {holder}"


def lock_holder(profile, directory: Path | None = None) -> str | None:
    """Who measures the hardware of `profile` now, or None. Only looks: a shared lock tried for
    an instant, nothing written (a check that should not disturb, or warn about, a collection)."""
    import fcntl

    try:
        fd = os.open(lock_path(profile, directory), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # never locked (or no lock folder yet): nobody measures
    with os.fdopen(fd) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another latbench process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _own_folder(directory: Path) -> None:
    """Make `directory` (mode 700) or check that the one there is a real folder of this user:
    the default sits in the shared temporary folder, where anyone could have made it first."""
    import stat

    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise LatbenchError(f"the lock folder {directory} is not a folder of this user",
                            "remove it, or set LATBENCH_LOCK_DIR to a folder of yours")


def _try_lock(handle) -> bool:
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
