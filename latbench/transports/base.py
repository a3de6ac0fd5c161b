"""What every transport offers; runners and collection only talk to this."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path

from latbench.profiles import DeviceProfile
from latbench.transports.run_journal import Mark, RunJournal


def whole_lines(text: str) -> str:
    """`text` up to its last newline: what a command printed before a lost connection may end
    inside a line, and a cut line must not be read as a whole one."""
    return text[: text.rfind("\n") + 1]


def sha256_file(path: Path) -> str:
    """Content hash that decides whether a device (or a farm agent) already has a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class Transport(abc.ABC):
    def __init__(self, profile: DeviceProfile):
        self.profile = profile
        self.journal = RunJournal(profile)  # this process's runs, for the next, should it be killed
        #: runs that other collections left timing, ended before a run of ours (for the user)
        self.ended_runs: list[str] = []

    @property
    def where(self) -> str:
        return "this host"

    def _end(self, mark: Mark, strict: bool = False) -> str | None:
        """End what the run `mark` names started (KILL_SCRIPT; `strict`: only if its leader is
        still there); what that printed ("ended" when something was left), None when it could
        not be sent."""
        return None

    def end_left_runs(self) -> None:
        """Before a command: stop the runs that collections killed outright left in the journal."""
        self.ended_runs += self.journal.end_left(self._end, self.where)

    @abc.abstractmethod
    def connect(self) -> None:
        """Reach the device; raise DeviceError with a fix when it cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def workdir(self) -> str:
        """Directory on the device that holds pushed models, the runner and batch files."""

    @abc.abstractmethod
    def push_many(self, pairs: list[tuple[Path, str]]) -> int:
        """Copy each (local, remote) pair to the device unless it already has that content;
        returns how many were copied. Remote transports check all of them in one go."""

    def push(self, local: Path, remote: str) -> None:
        self.push_many([(Path(local), remote)])

    @abc.abstractmethod
    def run(self, argv: list[str], timeout_s: float) -> CommandResult:
        """Run `argv` on the device; raise DeviceError on timeout."""

    @abc.abstractmethod
    def pull(self, remote: str, local: Path) -> None: ...

    def stage(self, local: Path, subdir: str = "models") -> str:
        """Make `local` available on the device; returns its path there."""
        remote = f"{self.workdir}/{subdir}/{local.name}"
        self.push(local, remote)
        return remote

    def stage_many(self, paths: list[Path], subdir: str = "models") -> list[str]:
        """`stage` for several files, pushed with one `push_many`."""
        remotes = [f"{self.workdir}/{subdir}/{Path(p).name}" for p in paths]
        self.push_many(list(zip((Path(p) for p in paths), remotes)))
        return remotes

    def python(self) -> str:
        return self.profile.python or "python3"

    def device_info(self) -> dict:
        """What `latbench doctor` shows: model, os, cores, governors, frequencies_khz,
        temperatures_c, free_bytes (in the work directory), python. Missing facts are None."""
        raise NotImplementedError

    def __enter__(self) -> "Transport":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
