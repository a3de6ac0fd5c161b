"""One collection per physical device at a time: two runs on one device time each other's
load, and both would store what they measured (the store keeps the first row of a key and
round). Profiles that reach the same hardware (`local` and `local-tflite`; two profiles of one
board) share a lock, and so do runs with different LATBENCH_HOMEs (a benchmark's temporary
home, a second store): the locks live in one folder per user of this host.

A run started on this host while its lock is held inherits the lock's file (`held_lock_fds`), so
the kernel frees the lock only once that run has ended too: a collection killed outright (OOM,
SIGKILL) leaves its run timing until its next result finds no reader, and the next collection
must not time beside it: it ends that run (`device_lock`) and says so."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from latbench.errors import LatbenchError
from latbench.processes import end_sessions, holding_flock, is_running

_held: dict[Path, int] = {}  # lock file -> the descriptor this process holds it by


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
def device_lock(profile, directory: Path | None = None, wait_s: float = 0.0) -> Iterator[list[str]]:
    """Hold `<lock_dir>/<hardware>.lock` (an advisory flock, freed by the kernel when this
    process ends, however it ends), waiting up to `wait_s` for it, or raise a LatbenchError
    naming the holder.

    A lock held by a run whose collection was killed outright is taken from it: that run's
    results have no reader, and it would time as load. The block gets what was ended, as
    "pid N (command), left running when latbench pid M, device D ended", for the user to see."""
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
    ended: list[str] = []
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(handle):
            handle.seek(0)
            holder, left = describe_holder(handle.read(), path)
            if left and not ended:
                end_sessions(left)
                ended.append(holder.removesuffix(LEFT_SUFFIX))
                deadline = max(deadline, time.monotonic() + 5)  # let the kernel free it
                continue
            if time.monotonic() >= deadline:
                hint = (f"end it (kill {' '.join(map(str, left))}), or wait for it: a run timing beside "
                        "this one would disturb both" if left else
                        "wait for that collection to finish: two at once would time each other's load")
                raise HardwareBusy(busy_message(profile, holder), hint, holder)
            time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{HOLDER_PREFIX}{os.getpid()}, device {profile.name}")
        handle.flush()
        _held[path] = handle.fileno()
        yield ended
    finally:
        _held.pop(path, None)
        handle.close()


HOLDER_PREFIX = "latbench pid "
LEFT_SUFFIX = " (the lock frees when that ends)"


def held_lock_fds(profile) -> tuple[int, ...]:
    """The descriptors by which this process holds the lock of `profile`'s hardware, for a run on
    that hardware to inherit (`subprocess.Popen(pass_fds=...)`): the lock then outlives this
    process as long as the run does."""
    name = lock_path(profile, Path()).name
    return tuple(fd for path, fd in _held.items() if path.name == name)


def held_lock_path(profile) -> Path | None:
    """The lock file of `profile`'s hardware if this process holds it, else None."""
    name = lock_path(profile, Path()).name
    return next((path for path in _held if path.name == name), None)


def describe_holder(text: str, path: Path) -> tuple[str, list[int]]:
    """Who holds the lock `path`, from what its holder wrote in it ("latbench pid N, device D"),
    and the pids of the runs that hold it since that holder ended (a gone pid; found by /proc)."""
    text = text.strip()
    if not text:
        return "another latbench process", []
    pid = text[len(HOLDER_PREFIX):].split(",", 1)[0] if text.startswith(HOLDER_PREFIX) else ""
    if not pid.isdigit() or is_running(int(pid)):
        return text, []
    runs = holding_flock(path)
    named = ", ".join(f"pid {p} ({command})" for p, command in runs) or "a run"
    return f"{named}, left running when {text} ended{LEFT_SUFFIX}", [p for p, _ in runs]


def busy_message(profile, holder: str) -> str:
    return f"the hardware of device {profile.name!r} ({hardware_name(profile)}) is being measured already, by {holder}"


def lock_holder(profile, directory: Path | None = None) -> str | None:
    """Who measures the hardware of `profile` now, or None. Only looks: a shared lock tried for
    an instant, nothing written (a check that should not disturb, or warn about, a collection)."""
    import fcntl

    path = lock_path(profile, directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # never locked (or no lock folder yet): nobody measures
    with os.fdopen(fd) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe_holder(handle.read(), path)[0]
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
