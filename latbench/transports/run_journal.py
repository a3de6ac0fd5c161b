"""The runs a collection started on a device and has not seen end, in a file beside the
hardware's lock (`<hardware>.runs`), kept only by the lock's holder.

A collection killed outright (SIGKILL, the OOM killer) cannot end its run: on this host the run
has a session of its own, sshd leaves a command running when its client goes, and adbd's hang-up
misses a tool under `timeout`. The run would time on as load under the next collection, so each
holder of the lock, before each command on the device, stops the runs the journal lists whose
collection is gone. Only a holder reads or writes the journal, and a listed run whose owner
still runs is left alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

Mark = tuple[str, str, str]  # (pid, start time, boot id), as remote_runs.run_mark reads them
STRICT_AFTER_S = 60.0  # past the profile's timeout_s: kill only a leader seen with its start time


class RunJournal:
    def __init__(self, profile):
        self.profile = profile

    def _path(self) -> Path | None:
        from latbench.locks import held_lock_path

        lock = held_lock_path(self.profile)
        return lock.with_suffix(".runs") if lock is not None else None

    def add(self, mark: Mark, command: str) -> None:
        """List a run that started. Only one whose start time and boot are known: KILL_SCRIPT
        can then tell it from a later process that has its pid."""
        path = self._path()
        if path is None or "-" in mark[1:]:
            return
        entries = _read(path)
        if all(e["mark"] != list(mark) for e in entries):
            me = process_mark(os.getpid())
            _write(path, entries + [{"mark": list(mark), "owner": os.getpid(), "owner_start": me and me[1],
                                     "device": self.profile.name, "command": command, "started": time.time()}])

    def remove(self, mark: Mark) -> None:
        """Strike a run whose end was seen (or that was ended)."""
        path = self._path()
        if path is None:
            return
        entries = _read(path)
        kept = [e for e in entries if e["mark"] != list(mark)]
        if len(kept) != len(entries):
            _write(path, kept)

    def end_left(self, end: Callable[[Mark, bool], str | None], where: str) -> list[str]:
        """Stop the listed runs whose collection no longer runs, with `end(mark, strict)`: what
        KILL_SCRIPT printed, None when it could not be sent (the entry stays for the next try).
        A run listed longer ago than the profile's timeout_s allows is ended only if its leader
        is still there (`strict`). Returns what was stopped, said for the user."""
        path = self._path()
        stopped = []
        for entry in _read(path) if path is not None else []:
            if _owner_runs(entry):
                continue  # a live collection's run (this one's lost run: its reconnect ends it)
            mark = tuple(entry["mark"])
            age_s = time.time() - float(entry.get("started") or 0)
            printed = end(mark, age_s > self.profile.timeout_s + STRICT_AFTER_S)
            if printed is None:
                continue
            self.remove(mark)
            if "ended" in printed.splitlines():  # something of it was still there
                stopped.append(f"pid {mark[0]} on {where} ({entry.get('command') or 'a run'}), left behind by "
                               f"latbench pid {entry.get('owner')} (device {entry.get('device')})")
        return stopped


def run_label(argv: list[str]) -> str:
    """How a run is named to the user: its program and first argument, without their folders
    ("python3 pyrunner.py", "sh batch-....sh")."""
    return " ".join(" ".join(os.path.basename(str(a)).split()) for a in argv[:2])


def process_mark(pid: int) -> Mark | None:
    """(pid, start time, boot id) of a process of this host; None without Linux /proc."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (OSError, IndexError):
        return None
    return str(pid), start, boot


def _owner_runs(entry: dict) -> bool:
    """Whether the collection that listed `entry` still runs (the same pid and start time, not a
    zombie)."""
    owner = entry.get("owner")
    if not isinstance(owner, int):
        return False
    try:
        fields = Path(f"/proc/{owner}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if os.path.exists("/proc/self/stat"):
            return False
        try:  # no /proc here: ask the kernel
            os.kill(owner, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except (OSError, IndexError):
        return True  # cannot tell: leave it
    return fields[0] != "Z" and entry.get("owner_start") in (None, fields[19])


def _read(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # none yet, or not ours to read: nothing is listed
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("mark"), list)
            and len(e["mark"]) == 3 and all(isinstance(m, str) for m in e["mark"])]


def _write(path: Path, entries: list[dict]) -> None:
    """Whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")  # only the lock's holder writes: one name will do
    try:
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, path)
    except OSError:  # a full /tmp must not stop a measurement; the run is only not listed
        pass
