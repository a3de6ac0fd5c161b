"""The `local` transport: this host, runner in a subprocess, files used in place."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from latbench import home
from latbench.errors import DeviceError, Interrupted
from latbench.transports.base import CommandResult, Transport, whole_lines
from latbench.transports.remote_runs import kill_argv
from latbench.transports.run_journal import Mark, process_mark, run_label


class LocalTransport(Transport):
    def connect(self) -> None:
        default = home.home_dir() / "work" / self.profile.name
        self._workdir = Path(self.profile.connection.get("workdir", default)).expanduser()
        try:
            self._workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeviceError(f"cannot create the work directory {self._workdir}: {exc.strerror}",
                              "set connection.workdir in the profile or LATBENCH_HOME to a writable place") from None

    def device_info(self) -> dict:
        from latbench.runners.pyrunner import cpus, device_state

        state = device_state()
        model = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        return {
            "model": model or platform.processor() or platform.machine(),
            # the cores this process may use (a container's cpuset), which a cpu_mask must name
            "os": platform.platform(), "cores": os.cpu_count(), "online_cpus": cpus(),
            "governors": state["governors"], "frequencies_khz": state["frequencies_khz"],
            "temperatures_c": state["temperatures_c"],
            "free_bytes": shutil.disk_usage(self._workdir).free, "python": platform.python_version(),
        }

    def close(self) -> None:
        pass

    @property
    def workdir(self) -> str:
        return str(self._workdir)

    def python(self) -> str:
        return self.profile.python or sys.executable

    def _end(self, mark: Mark, strict: bool = False) -> str | None:
        try:
            return subprocess.run(kill_argv(mark, strict), capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None

    def stage(self, local: Path, subdir: str = "models") -> str:
        return str(local)  # same filesystem: use files in place

    def stage_many(self, paths: list[Path], subdir: str = "models") -> list[str]:
        return [str(p) for p in paths]

    def push_many(self, pairs: list[tuple[Path, str]]) -> int:
        copied = 0
        for local, remote in pairs:
            if Path(remote).resolve() != Path(local).resolve():
                Path(remote).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, remote)
                copied += 1
        return copied

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def run(self, argv: list[str], timeout_s: float) -> CommandResult:
        """Run `argv` in a session of its own; on a timeout, Ctrl-C or SIGTERM the whole session
        is killed (a batch script's `timeout` puts the tool in a process group of its own). The run
        is listed in the journal meanwhile: should this process be killed outright, the next
        collection ends it."""
        self.end_left_runs()
        try:
            # UTF-8 whatever the locale, and a stray byte (a native library's message) becomes
            # U+FFFD instead of a UnicodeDecodeError that loses the whole batch's output
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    encoding="utf-8", errors="replace", start_new_session=True)
        except FileNotFoundError:
            raise DeviceError(f"{argv[0]} not found on this host",
                              f"set `python:` in {self.profile.source}") from None
        mark = None
        try:
            if (mark := process_mark(proc.pid)) is not None:
                self.journal.add(mark, run_label(argv))
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            # what it printed up to the kill (communicate keeps what it read before the timeout)
            printed = _kill_session(proc) or _text(exc.stdout)
            err = DeviceError(f"{argv[0]} took longer than {timeout_s:g} s on {self.profile.name}",
                              "raise timeout_s in the profile or lower protocol.batch_size")
            err.partial_stdout = whole_lines(printed)  # what finished before the time ran out is kept
            err.timed_out = True
            raise err from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in a collection
            printed = _kill_session(proc)
            raise Interrupted(whole_lines(printed), *exc.args[:1]) from None
        except BaseException:
            _kill_session(proc)
            raise
        finally:
            if mark is not None:
                self.journal.remove(mark)  # it ended, or `_kill_session` ended it
        return CommandResult(proc.returncode, stdout, stderr)


def _kill_session(proc: subprocess.Popen) -> str:
    """End every process of the session `proc` leads (its pid is the session id), reap it, and
    return what it had printed on stdout (communicate keeps what it read before it was cut)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = _session_members(proc.pid)
        for pid in members:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if sig == signal.SIGTERM and members:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            if not _session_members(proc.pid):
                break
    try:
        stdout, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired as exc:  # a process that left the session holds stdout open
        return _text(exc.stdout)  # what was read until then: the finished results are in it
    except ValueError:
        return ""
    return stdout or ""


def _text(printed: str | bytes | None) -> str:
    """A TimeoutExpired's output as text: it holds the raw bytes read so far, even in text mode."""
    if isinstance(printed, bytes):
        return printed.decode("utf-8", "replace")
    return printed or ""


def _session_members(sid: int) -> list[int]:
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
