"""A real OpenSSH server on 127.0.0.1 for the tests: Debian's /usr/sbin/sshd with a temporary
config, host key and user key authorized for the current user.

Load the fixtures with ``pytest_plugins = ["sshd"]`` in a test module. Without sshd or
ssh-keygen (``apt-get install openssh-server``) the tests that use them are skipped.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new key pair without passphrase at `path` (+ `.pub`)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "latbench-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


def unwritable_dir(tmp: Path) -> Path:
    """A directory on the "board" that exists but takes no new file, even for root (who
    ignores permission bits): a read-only work directory."""
    if os.geteuid() == 0:
        return Path("/proc/1")  # procfs: no file can be created there
    d = tmp / "read only"
    d.mkdir()
    d.chmod(0o555)
    return d


def _descendants(root: int) -> list[int]:
    """Pids of every process below `root` (sshd forks one child per connection)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PortTaken(RuntimeError):
    """sshd could not bind its port."""


@functools.lru_cache(maxsize=1)
def _sshd_version() -> tuple[int, int]:
    try:
        said = subprocess.run([SSHD, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    found = re.search(r"OpenSSH_(\d+)\.(\d+)", said)
    return (int(found[1]), int(found[2])) if found else (0, 0)


class SSHServer:
    """One sshd on a free port of 127.0.0.1; `kill()` drops it like a board losing power."""

    def __init__(self, root: Path):
        self.root = root
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = keygen(root / "host_ed25519")
        self.user_key = keygen(root / "user_ed25519")
        (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text())
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self._started = False
        self._write_config()

    def _write_config(self) -> None:
        # OpenSSH >= 9.8 penalises a source address after failed logins, and the tests that
        # refuse a key or a host do just that from 127.0.0.1 to the shared server
        penalties = ["PerSourcePenalties no"] if _sshd_version() >= (9, 8) else []
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "MaxStartups 50",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            *penalties,
            "",
        ]))

    @property
    def known_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    def host_key_line(self) -> str:
        """The known_hosts line for this server's host key."""
        kind, blob = (self.root / "host_ed25519.pub").read_text().split()[:2]
        return f"{self.known_name} {kind} {blob}\n"

    def start(self, timeout_s: float = 10.0) -> None:
        for attempt in range(3):
            try:
                return self._start(timeout_s)
            except PortTaken:
                if self._started or attempt == 2:  # a restart keeps its port: profiles name it
                    raise
                self.port = free_port()  # another process took it between free_port() and the bind
                self._write_config()

    def _start(self, timeout_s: float) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        logged = self.log.stat().st_size if self.log.exists() else 0
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log.read_bytes()[logged:].decode("utf-8", "replace")
                if "Address already in use" in said:
                    raise PortTaken(said[-500:])
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    self._started = True
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not accept on port {self.port}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the listener and every session below it (open connections drop at once)."""
        if self.proc is None:
            return
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()


def _skip_reason() -> str | None:
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    if not PRIVSEP_DIR.exists() and not os.access(PRIVSEP_DIR.parent, os.W_OK):
        return f"sshd needs {PRIVSEP_DIR} and it cannot be created here (run as root or create it)"
    return None


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory):
    """Start more servers: each call gives a new started SSHServer, all stopped at the end."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("paramiko", reason="the ssh transport needs paramiko: pip install -e .[remote]")
    servers: list[SSHServer] = []

    def make() -> SSHServer:
        server = SSHServer(tmp_path_factory.mktemp("sshd"))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sshd(sshd_factory) -> SSHServer:
    """One shared server for the tests that do not stop it."""
    return sshd_factory()
