"""What every transport offers; runners and collection only talk to this."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from latbench.profiles import DeviceProfile


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class Transport(abc.ABC):
    def __init__(self, profile: DeviceProfile):
        self.profile = profile

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
    def push(self, local: Path, remote: str) -> None:
        """Copy `local` to `remote` on the device (skipped when the device already has it)."""

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
        """`stage` for several files; remote transports check and push them in one go."""
        return [self.stage(p, subdir) for p in paths]

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
