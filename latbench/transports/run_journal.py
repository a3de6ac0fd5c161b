"""The runs a collection started on a device and has not seen end, in a file beside the
hardware's lock (`<hardware>.runs`), kept only by the lock's holder.

A collection killed outright (SIGKILL, the OOM killer) cannot end its run: on this host the run
has a session of its own, sshd leaves a command running when its client goes, and adbd's hang-up
misses a tool under `timeout`. The run would time on as load under the next collection, so the
next holder of the lock ends what the journal lists before its first command on the device.
Only a holder reads or writes the journal, so a run listed there is never a live collection's."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

Mark = tuple[str, str, str]  # (pid, start time, boot id), as remote_runs.run_mark reads them


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
            _write(path, entries + [{"mark": list(mark), "owner": os.getpid(), "device": self.profile.name,
                                     "command": command, "started": time.time()}])

    def remove(self, mark: Mark) -> None:
        """Strike a run whose end was seen (or that was ended)."""
        path = self._path()
        if path is None:
            return
        entries = _read(path)
        kept = [e for e in entries if e["mark"] != list(mark)]
        if len(kept) != len(entries):
            _write(path, kept)

    def end_left(self, end: Callable[[Mark], str | None], where: str, ours: list[Mark]) -> list[str]:
        """End the listed runs but `ours` (this transport's runs of a dropped connection, ended
        when it reconnects) with `end(mark)`: what KILL_SCRIPT printed, None when it could not be
        sent (the entry stays for the next try). Returns what was ended, said for the user."""
        path = self._path()
        ended = []
        for entry in _read(path) if path is not None else []:
            mark = tuple(entry["mark"])
            if mark in ours:
                continue
            printed = end(mark)
            if printed is None:
                continue
            self.remove(mark)
            if "ended" in printed:  # something of it was still there
                ended.append(f"pid {mark[0]} on {where} ({entry.get('command') or 'a run'}), left behind by "
                             f"latbench pid {entry.get('owner')} (device {entry.get('device')})")
        return ended


def run_label(argv: list[str]) -> str:
    """How a run is named to the user: its program and first argument, without their folders
    ("python3 pyrunner.py", "sh batch-....sh")."""
    return " ".join(" ".join(os.path.basename(str(a)).split()) for a in argv[:2])


def _read(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or not ours to read: nothing is listed
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
