"""Processes of this host, read from Linux /proc: a run's session (everything a runner started,
whatever process group a batch script's `timeout` put it in) and who holds a lock file."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def session_members(sid: int) -> list[int]:
    """Pids whose session is `sid` (Linux /proc; elsewhere only the leader)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [sid]
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(name))
    return found


def is_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: a parent that never reaps it keeps its pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's
            return True
        return True


def holding_flock(path: Path) -> list[tuple[int, str]]:
    """(pid, command line) of this user's processes that hold the flock on `path`: an fd on it
    whose fdinfo lists the lock (one waiting for the lock has the file open too, without it)."""
    found = []
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    target = str(path.resolve())
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if "FLOCK" not in f.read():
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                found.append((int(pid), command[:120]))
                break
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return found


def end_sessions(pids: list[int], grace_s: float = 2.0) -> None:
    """SIGTERM every process in the sessions of `pids`, then SIGKILL what is left after
    `grace_s`. Never this process's own session."""
    own = os.getsid(0)
    sessions = set()
    for pid in pids:
        try:
            sid = os.getsid(pid)
        except OSError:
            continue
        if sid not in (own, 0, 1):
            sessions.add(sid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = [m for sid in sessions for m in session_members(sid)]
        for pid in members:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(map(is_running, members)):
            time.sleep(0.05)
