"""The `ssh` transport: a Linux board reached with paramiko (exec + SFTP).

Host keys are checked against a known_hosts file and an unknown host is refused
unless the user opts in (``connection.trust_unknown_host: true`` or the CLI's
``--trust-new-host``); a changed key is always refused. Every remote command is
built with `shlex.join`, so paths and names reach the device literally.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import posixpath
import select
import shlex
import socket
import time
import uuid
from pathlib import Path
from typing import Sequence

from latbench.errors import DeviceError, Interrupted
from latbench.profiles import DeviceProfile
from latbench.transports.base import CommandResult, Transport, sha256_file, whole_lines
from latbench.transports.remote_runs import PID_PREFIX, command_stdout, kill_argv, run_mark, shell_missed
from latbench.transports.run_journal import Mark, run_label

try:
    import paramiko
except ImportError:  # pragma: no cover - depends on the environment
    paramiko = None
else:
    # paramiko logs a failed handshake with a traceback; latbench reports it as one line.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = "/tmp/latbench"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: Longest argument list sent in one command (well under any ARG_MAX and SSH packet limit).
_MAX_ARGS_BYTES = 32_000
_SFTP_TIMEOUT_S = 60.0

# One round trip for many files: the sha256 of each path in order, "-" when it is missing.
_HASH_SCRIPT = ('for f do if [ -f "$f" ]; then sha256sum < "$f" 2>/dev/null || echo -; '
                'else echo -; fi; done')
# At connect: create the work directory and check that a file can be written there (exit 3:
# an existing directory on a read-only filesystem passes `mkdir -p`, and the first upload
# would fail later as if the runtime were wrong; printf, not `:`, whose failed redirection
# ends sh at once). $1 = workdir.
_WORKDIR_SCRIPT = ('mkdir -p -- "$1" || exit 1; f="$1/.latbench-probe-$$"; '
                   'printf "" > "$f" || exit 3; rm -f -- "$f"')
# Everything `latbench doctor` shows, read in one command; $1 = workdir, $2 = python.
_INFO_SCRIPT = r"""
printf 'model\t%s\n' "$(tr -d '\000' < /proc/device-tree/model 2>/dev/null)"
printf 'cpumodel\t%s\n' "$(grep -m 1 -E '^(model name|Model|Hardware)' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
printf 'uname\t%s\n' "$(uname -srm 2>/dev/null)"
printf 'cores\t%s\n' "$(getconf _NPROCESSORS_ONLN 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
printf 'online\t%s\n' "$(cat /sys/devices/system/cpu/online 2>/dev/null)"
printf 'allowed\t%s\n' "$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status 2>/dev/null)"
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c/cpufreq" ] || continue
  printf 'cpu\t%s\t%s\t%s\t%s\n' "${c##*/}" "$(cat "$c/cpufreq/scaling_governor" 2>/dev/null)" \
    "$(cat "$c/cpufreq/scaling_cur_freq" 2>/dev/null)" "$(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null)"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] && printf 'temp\t%s\t%s\t%s\n' "${z##*/}" "$(cat "$z/type" 2>/dev/null)" \
    "$(cat "$z/temp" 2>/dev/null)"
done
printf 'df\t%s\n' "$(df -Pk "$1" 2>/dev/null | tail -n 1)"
printf 'python\t%s\n' "$("$2" -c 'import platform; print(platform.python_version())' 2>/dev/null)"
"""


def _looks_public(path: str) -> bool:
    """Whether `path` holds an OpenSSH public key line (the ``.pub`` half of a pair)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(200).split(maxsplit=2)
    except OSError:
        return False
    return len(head) >= 2 and head[0].startswith((b"ssh-", b"ecdsa-", b"sk-")) and head[1].startswith(b"AAAA")


#: connect() errnos of a host that does not answer at all (off, or off the network).
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)


def _connect_failure(exc: BaseException) -> BaseException:
    """The socket error behind a failed connect: paramiko wraps in NoValidConnectionsError only
    ECONNREFUSED and EHOSTUNREACH (one per address; others, e.g. ENETUNREACH, come raw). A
    refusal from any address proves the host up with no sshd there, so it wins."""
    if not isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or not exc.errors:
        return exc
    errors = list(exc.errors.values())
    refused = [e for e in errors if isinstance(e, ConnectionRefusedError)]
    return (refused or errors)[0]


def _require_paramiko() -> None:
    if paramiko is None:
        raise DeviceError("the ssh transport needs paramiko, which is not installed",
                          "pip install -e .[remote] (or pip install paramiko)")


def _chunks(paths: Sequence[str]) -> list[list[str]]:
    """Split `paths` into argument lists short enough for one remote command each."""
    out: list[list[str]] = [[]]
    size = 0
    for p in paths:
        n = len(shlex.quote(p)) + 1
        if out[-1] and size + n > _MAX_ARGS_BYTES:
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return [c for c in out if c]


def _drain(chan, out: bytearray, err: bytearray) -> None:
    """Read what a closed channel still holds (bounded: it can hold no more than it received)."""
    for _ in range(1024):
        got = False
        if chan.recv_ready():
            out += chan.recv(65536)
            got = True
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            got = True
        if not got:
            return


class _HostKeyPolicy:
    """Called by paramiko only for a host with no key at all in known_hosts.

    Refuses with the fix, or, when the user trusts new hosts on purpose, appends the
    key to the known_hosts file so the next connection checks it.
    """

    def __init__(self, transport: "SSHTransport"):
        self.transport = transport

    def missing_host_key(self, client, hostname: str, key) -> None:
        t = self.transport
        if t.is_revoked(key):
            err = DeviceError(
                f"the SSH host key of {hostname} ({key.get_name()} {key.fingerprint}) is marked "
                f"@revoked in {t.known_hosts}; refusing to connect",
                "do not trust this host; if the board was reinstalled with a new key, get that key "
                "from its console and put it in known_hosts")
            err.stage = "revoked_host"
            raise err
        if not t.trust_new_host:
            q = shlex.quote
            skipped = (f" ({t.skipped_cert_authorities} @cert-authority line(s) there are not "
                       "checked)" if t.skipped_cert_authorities else "")
            err = DeviceError(
                f"the SSH host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in "
                f"{t.known_hosts}{skipped}",
                f"check the fingerprint, then trust it on purpose: `mkdir -p "
                f"{q(os.path.dirname(t.known_hosts) or '.')} && ssh-keyscan -p {t.port} {q(t.host)} "
                f">> {q(t.known_hosts)}`, or `{t.ssh_command()}` once, or "
                f"set connection.trust_unknown_host: true in {t.profile.source or t.profile.name} "
                f"(or pass --trust-new-host)")
            err.stage = "unknown_host"
            raise err
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = Path(t.known_hosts)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "a+b") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell():  # a hand-edited file may lack its last newline: keep the lines apart
                    fh.seek(-1, os.SEEK_END)
                    ends = fh.read(1) == b"\n"
                    fh.seek(0, os.SEEK_END)
                    if not ends:
                        fh.write(b"\n")
                fh.write(paramiko.hostkeys.HostKeyEntry([hostname], key).to_line().encode())
        except OSError as exc:
            err = DeviceError(f"cannot remember the host key of {hostname} in {path}: "
                              f"{exc.strerror or exc}",
                              "set connection.known_hosts to a writable file")
            err.stage = "unknown_host"  # it answered; its key is not known for next time
            raise err from None
        t.trusted_new_key = key.fingerprint


class SSHTransport(Transport):
    """A board over SSH. Reconnects once on its own when the connection dropped."""

    def __init__(self, profile: DeviceProfile):
        super().__init__(profile)
        conn = profile.connection
        self.host: str = conn["host"]
        self.port: int = int(conn.get("port", 22))
        self.user: str = conn.get("user") or getpass.getuser()
        self.key_file: str | None = os.path.expanduser(conn["key_file"]) if conn.get("key_file") else None
        self.known_hosts: str = os.path.expanduser(conn.get("known_hosts") or DEFAULT_KNOWN_HOSTS)
        #: Accept and remember a host never seen before; the CLI's --trust-new-host sets it.
        self.trust_new_host: bool = bool(conn.get("trust_unknown_host", False))
        self.connect_timeout_s: float = float(conn.get("connect_timeout_s", 10))
        self._workdir_setting: str = conn.get("workdir") or DEFAULT_WORKDIR
        self._workdir: str | None = None
        self._client = None
        self._sftp = None
        self._home: str | None = None
        self._connected_once = False
        #: remote path -> sha256 of what is there, learned in this connection
        self._remote_sha: dict[str, str] = {}
        self._local_sha: dict[tuple[str, int, int], str] = {}
        #: files actually uploaded by this transport (not skipped); for reports and tests
        self.uploads = 0
        self.trusted_new_key: str | None = None
        #: host keys of @revoked lines in known_hosts, and how many @cert-authority lines were skipped
        self.revoked_keys: list = []
        self.skipped_cert_authorities = 0
        #: (pid, start time, boot id) of runs whose end was not seen; killed on reconnect
        self._lost_runs: list[tuple[str, str, str]] = []

    # ---- connection ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> None:
        """Open the SSH connection, verify the host key, log in and create the work directory."""
        _require_paramiko()
        self.close()
        client = paramiko.SSHClient()
        if os.path.isfile(self.known_hosts):
            try:
                self._load_known_hosts(client.get_host_keys())
            except DeviceError as exc:
                exc.stage = "not_tried"  # a file here: nothing is known of the board
                raise
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        if self.key_file and not os.path.isfile(self.key_file):
            err = DeviceError(f"the SSH key file {self.key_file} does not exist",
                              f"fix connection.key_file in {self.profile.source or self.profile.name}")
            err.stage = "not_tried"  # found before any contact: nothing is known of the board
            raise err
        timeout = self.connect_timeout_s
        try:
            client.connect(
                self.host, port=self.port, username=self.user,
                key_filename=self.key_file, allow_agent=self.key_file is None,
                look_for_keys=self.key_file is None, timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout, channel_timeout=timeout)
        except DeviceError:
            client.close()
            raise
        except Exception as exc:  # paramiko and socket errors: one clear line each
            client.close()
            raise self._connect_error(exc) from None
        client.get_transport().set_keepalive(15)
        self._client = client
        self._home = None
        self._remote_sha.clear()
        self._connected_once = True
        try:
            self._kill_lost_runs()
            self._workdir = self._resolve_workdir(self._workdir_setting)
            res = self.run(["sh", "-c", _WORKDIR_SCRIPT, "sh", self._workdir], timeout + 20)
        except DeviceError as exc:  # logged in, then failed: not left half-connected
            self.close()
            if not hasattr(exc, "stage"):
                exc.stage = "setup"  # reached and logged in: `latbench doctor` says so
            raise
        if res.exit_code != 0:
            self.close()  # not left half-connected: a later call connects again and says why
            what = "cannot write to" if res.exit_code == 3 else "cannot create"
            err = DeviceError(f"{what} the work directory {self._workdir} on {self.where}: "
                              f"{res.stderr.strip()[:200]}",
                              f"set connection.workdir in {self.profile.source or self.profile.name} "
                              "to a writable directory")
            err.stage = "setup"  # reached and logged in: `latbench doctor` says so
            raise err

    def _load_known_hosts(self, keys) -> None:
        """Read known_hosts like OpenSSH does, as far as paramiko can check it.

        paramiko cannot parse marker lines: ``@cert-authority`` lines are skipped (host
        certificates are not checked, so such a host counts as unknown), and the keys of
        ``@revoked`` lines are refused for every host (OpenSSH limits them to the line's hosts;
        refusing more is the safe side)."""
        self.revoked_keys = []
        self.skipped_cert_authorities = 0
        try:
            with open(self.known_hosts) as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DeviceError(f"cannot read the known_hosts file {self.known_hosts}: "
                              f"{getattr(exc, 'strerror', None) or exc}",
                              "fix its permissions, or set connection.known_hosts") from None
        entries = []
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker != "@revoked":
                    self.skipped_cert_authorities += marker == "@cert-authority"
                    logger.debug("%s line %d: %s lines are not supported; skipped",
                                 self.known_hosts, lineno, marker)
                    continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip(), lineno)
            except Exception:  # InvalidHostKey, SSHException, binascii.Error, ...
                if marker == "@revoked":  # skipping it could let a revoked key through
                    raise DeviceError(f"line {lineno} of the known_hosts file {self.known_hosts} is a "
                                      "@revoked line latbench cannot read",
                                      "fix or remove that line, or set connection.known_hosts") from None
                # As OpenSSH and paramiko do: one bad line (of any host) does not block the rest.
                logger.debug("%s line %d is not a host key line; skipped", self.known_hosts, lineno)
                continue
            if entry is None:  # too few fields or a key type paramiko does not know: as paramiko
                continue
            if marker == "@revoked":
                self.revoked_keys.append(entry.key)
            else:
                entries.append(entry)
        for entry in entries:
            if entry.key in self.revoked_keys:
                continue  # a revoked key never verifies a host, even if a normal line has it
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)

    def is_revoked(self, key) -> bool:
        """Whether known_hosts marks `key` @revoked."""
        return key in self.revoked_keys

    def _connect_error(self, exc: BaseException) -> DeviceError:
        src = self.profile.source or self.profile.name
        exc = _connect_failure(exc)
        if isinstance(exc, paramiko.BadHostKeyException):
            err = DeviceError(
                f"the SSH host key of {self.host}:{self.port} CHANGED: it offers "
                f"{exc.key.get_name()} {exc.key.fingerprint}, {self.known_hosts} has "
                f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint} (a reinstalled "
                f"board, or someone in between)",
                "if the board was reinstalled, remove the old key with `ssh-keygen -R "
                f"{shlex.quote(self._known_name())} -f {shlex.quote(self.known_hosts)}` and connect "
                "again; otherwise do not")
            err.stage = "changed_host"
            return err
        if isinstance(exc, paramiko.PasswordRequiredException):
            err = DeviceError(f"the SSH key {self.key_file} is protected by a passphrase",
                              f"load it into ssh-agent (`ssh-add {self.key_file}`) and remove "
                              f"connection.key_file from {src}")
            err.stage = "auth"
            return err
        if isinstance(exc, paramiko.SSHException) and self.key_file and "private key" in str(exc):
            # paramiko reads the key file only once the server answered and its key verified
            if _looks_public(self.key_file):
                private = self.key_file[:-4] if self.key_file.endswith(".pub") else None
                err = DeviceError(f"the SSH key file {self.key_file} is a public key",
                                  "point connection.key_file at the private key"
                                  + (f" ({private})" if private and os.path.isfile(private) else "")
                                  + f" in {src}; the .pub half goes on the board")
            else:
                err = DeviceError(f"the SSH key file {self.key_file} is not a private key paramiko "
                                  f"can read ({exc})"[:300],
                                  f"point connection.key_file at an OpenSSH or PEM private key in {src}")
            err.stage = "auth"
            return err
        if isinstance(exc, paramiko.AuthenticationException):
            key = self.key_file or "the agent and ~/.ssh keys"
            err = DeviceError(f"SSH login as {self.user}@{self.host}:{self.port} failed with {key}",
                              f"install your public key on the board (`{self.ssh_command('ssh-copy-id')}`), "
                              f"or set connection.key_file/user in {src}")
            err.stage = "auth"
            return err
        if isinstance(exc, socket.gaierror):
            user, at, rest = self.host.rpartition("@")
            name, colon, port = rest.rpartition(":")
            has_port = bool(colon) and port.isdigit() and ":" not in name  # not an IPv6 address
            if at or has_port:
                fix = (f"connection.host is only the host name: set host: {name if has_port else rest}"
                       + (f" and port: {port}" if has_port else "") + (f" and user: {user}" if at else "")
                       + f" in {src}")
            else:
                fix = f"fix connection.host in {src} or use the board's IP address"
            err = DeviceError(f"cannot resolve the host name {self.host!r}", fix)
        elif isinstance(exc, ConnectionRefusedError):
            err = DeviceError(f"{self.host}:{self.port} refused the SSH connection",
                              "check that sshd runs on the board (`systemctl status ssh`) and "
                              f"connection.port in {src}")
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            err = DeviceError(f"no SSH answer from {self.host}:{self.port} within "
                              f"{self.connect_timeout_s:g} s",
                              "check that the board is on and on the network, or raise "
                              f"connection.connect_timeout_s in {src}")
        elif isinstance(exc, paramiko.SSHException) and self._client_gave_up(exc):
            err = DeviceError(f"{self.host}:{self.port} accepted the connection but gave no SSH "
                              f"handshake within {self.connect_timeout_s:g} s",
                              "check that connection.port is the board's SSH port and that sshd is "
                              f"healthy there, or raise connection.connect_timeout_s in {src}")
        elif isinstance(exc, OSError):
            # a board that is off or off the network: "No route to host", not a refusal
            err = DeviceError(f"cannot reach {self.host}:{self.port}: {exc.strerror or exc}",
                              "check that the board is on and on the network, and connection.host "
                              f"in {src}" if exc.errno in _UNREACHABLE
                              else "check the network and connection.host/port in " + src)
        else:
            err = DeviceError(f"SSH connection to {self.host}:{self.port} failed: "
                              f"{type(exc).__name__}: {exc}"[:300],
                              f"try `{self.ssh_command()}` to see why")
        err.stage = "reach"
        return err

    def ssh_command(self, program: str = "ssh") -> str:
        """`ssh` (or `ssh-copy-id`) as the hints give it: with the profile's port, key file and
        known_hosts, so that what it trusts or installs is what latbench then uses."""
        words = [program]
        if self.key_file:  # ssh-copy-id installs the public half, ssh logs in with the private one
            words += ["-i", self.key_file + ".pub" if program == "ssh-copy-id" else self.key_file]
        if self.known_hosts != os.path.expanduser(DEFAULT_KNOWN_HOSTS):
            # ssh splits this option's value at spaces (a list of files) unless it is in quotes
            path = f'"{self.known_hosts}"' if any(c.isspace() for c in self.known_hosts) else self.known_hosts
            words += ["-o", f"UserKnownHostsFile={path}"]
        return shlex.join([*words, "-p", str(self.port), f"{self.user}@{self.host}"])

    @staticmethod
    def _client_gave_up(exc: BaseException) -> bool:
        """paramiko's ways of saying the server never spoke SSH in time."""
        text = str(exc).lower()
        return any(w in text for w in ("banner", "no existing session", "timeout", "timed out"))

    def _known_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _remote_home(self) -> str:
        if self._home is None:
            self._home = self.sftp().normalize(".")  # SFTP sessions start in the login's home
        return self._home

    def _expand_home(self, path: str) -> str:
        """``~/x`` -> the login's home + ``/x``: quoted words get no tilde expansion remotely."""
        if path == "~" or path.startswith("~/"):
            return posixpath.join(self._remote_home(), path[2:])
        return path

    def _resolve_workdir(self, path: str) -> str:
        """An absolute path: SFTP and quoted commands must agree on where it is."""
        path = self._expand_home(path)
        if not path.startswith("/"):
            path = posixpath.join(self._remote_home(), path)
        return posixpath.normpath(path)

    def python(self) -> str:
        return self._expand_home(self.profile.python or "python3")

    def _ensure(self):
        """The live client; reconnects once when an earlier connection dropped."""
        alive = self._client is not None and self._client.get_transport() is not None \
            and self._client.get_transport().is_active()
        if not alive:
            if not self._connected_once:
                raise DeviceError("the SSH transport is not connected", "call connect() first")
            self.connect()
        return self._client

    def sftp(self):
        self._ensure()
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except Exception as exc:
                raise DeviceError(f"cannot open SFTP on {self.where}: {exc}",
                                  "enable the sftp subsystem in the board's sshd_config") from None
            self._sftp.get_channel().settimeout(_SFTP_TIMEOUT_S)
        return self._sftp

    def close(self) -> None:
        for obj in (self._sftp, self._client):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self._sftp = self._client = None

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            raise DeviceError("the SSH transport is not connected", "call connect() first")
        return self._workdir

    # ---- commands --------------------------------------------------------------------------

    def run(self, argv: list[str], timeout_s: float) -> CommandResult:
        """Run `argv` (quoted word by word) in the login shell; kill it after `timeout_s`."""
        client = self._ensure()
        self.end_left_runs()
        command = PID_PREFIX + shlex.join(argv)
        try:
            chan = client.get_transport().open_session(timeout=self.connect_timeout_s)
            chan.exec_command(command)
            chan.shutdown_write()  # nothing reads our stdin
        except Exception as exc:
            self.close()
            raise self._lost(argv, exc) from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s
        journaled, first_line = None, False
        try:
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                if not first_line and b"\n" in out:  # the pid line, once
                    first_line = True
                    if (journaled := run_mark(out)) is not None:
                        self.journal.add(journaled, run_label(argv))
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed or not client.get_transport().is_active():
                    # the last output can come with the close, after the reads above: paramiko
                    # keeps it readable, and dropping it cut a batch's last result and its end line
                    _drain(chan, out, err)
                    break
                remaining = deadline - time.monotonic()
                if got and remaining > 0:  # a run printing without pause is still held to its limit
                    continue
                if remaining <= 0:
                    mark = run_mark(out)
                    if mark is None or not self._kill(mark):
                        # No pid line, or a kill that cannot be sent: the link went silent (a board
                        # that lost power or Wi-Fi; paramiko's keepalive never notices), so this is a
                        # lost connection, not a model too slow for timeout_s.
                        self._remember_lost(out, run_label(argv))  # killed at the next connection
                        self.close()
                        raise self._lost(argv, None, out, (
                            f"nothing came back in {timeout_s:g} s" if mark is None else
                            f"it ran past {timeout_s:g} s and the board did not take the kill"))
                    err = DeviceError(
                        f"{argv[0]} took longer than {timeout_s:g} s on {self.profile.name}; killed",
                        "raise timeout_s in the profile or lower protocol.batch_size")
                    err.partial_stdout = whole_lines(command_stdout(out))  # what finished is kept
                    err.timed_out = True
                    raise err
                select.select([chan], [], [], min(remaining, 0.5))
        except DeviceError:
            chan.close()
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in a collection: end the board's run too
            # what paramiko already received holds finished results (and the run's pid line)
            for _ in range(64):  # bounded: a run printing fast must not hold up the stop
                if not chan.recv_ready():
                    break
                out += chan.recv(65536)
            chan.close()
            if not self._kill(run_mark(out)):
                self._remember_lost(out, run_label(argv))
            raise Interrupted(whole_lines(command_stdout(out)), *exc.args[:1]) from None
        except Exception as exc:
            self._remember_lost(out, run_label(argv))
            self.close()
            raise self._lost(argv, exc, out) from None
        finally:
            if journaled is not None and journaled not in self._lost_runs:
                self.journal.remove(journaled)  # ended, or killed: nothing left for the next process
        # paramiko leaves exit_status at -1 when the channel closed without one: a dropped
        # connection (its thread closes the channels a moment before it marks itself
        # inactive) or, on a live one, a login shell killed by a signal.
        code = chan.exit_status if chan.exit_status_ready() else -1
        if code == -1:
            chan.close()
            if not self._wait_inactive(client, 1.0):
                if not self._kill(run_mark(out)):
                    self._remember_lost(out, run_label(argv))
                raise DeviceError(f"{argv[0]} ended without an exit status on {self.where} "
                                  "(killed by a signal, e.g. the out-of-memory killer?)",
                                  "check `dmesg` on the board; re-run, collection resumes with "
                                  "what is missing")
            self._remember_lost(out, run_label(argv))
            self.close()
            raise self._lost(argv, None, out)
        chan.close()
        stdout = command_stdout(out)
        stderr = err.decode("utf-8", "replace")
        if code == 127 and shell_missed(argv[0], stderr):
            raise DeviceError(f"{argv[0]} not found on {self.profile.name}",
                              f"install it on the board or set `python:` in "
                              f"{self.profile.source or self.profile.name}")
        return CommandResult(code, stdout, stderr)

    def _lost(self, argv: list[str], exc: BaseException | None, out: bytearray | None = None,
              why: str = "") -> DeviceError:
        why = (f" ({type(exc).__name__}: {exc})" if exc is not None and str(exc) else
               f" ({why})" if why else "")
        err = DeviceError(f"lost the SSH connection to {self.where} while running {argv[0]}{why}"[:400],
                          "check that the board is up (it may have rebooted); re-run, "
                          "collection resumes with what is missing")
        err.partial_stdout = whole_lines(command_stdout(out or bytearray()))
        return err

    @staticmethod
    def _wait_inactive(client, wait_s: float) -> bool:
        """True when the connection under `client` is gone (or goes within `wait_s`)."""
        deadline = time.monotonic() + wait_s
        while True:
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _remember_lost(self, out: bytearray, command: str) -> None:
        """A run whose end we did not see may still run on the board: kill it on reconnect (or,
        should this process be killed first, the next holder of the lock does)."""
        mark = run_mark(out)
        if mark is not None and mark not in self._lost_runs:
            self._lost_runs.append(mark)
            self.journal.add(mark, command)

    def _kill(self, mark: tuple[str, str, str] | None) -> bool:
        """End the process group of a run (see `run_mark`) through a new channel; False when
        the kill could not be sent. Never kills a reused pid or anything after a reboot."""
        return mark is None or self._end(mark) is not None

    def _end(self, mark: Mark, strict: bool = False) -> str | None:
        try:
            chan = self._client.get_transport().open_session(timeout=self.connect_timeout_s)
            chan.settimeout(30)  # KILL_SCRIPT waits up to 2 s (20 s with a board's whole-second sleep)
            chan.exec_command(shlex.join(kill_argv(mark, strict)))
            printed = chan.makefile("rb").read().decode("utf-8", "replace")
            chan.recv_exit_status()
            chan.close()
        except Exception:
            return None
        return printed

    def _kill_lost_runs(self) -> None:
        """Before any new command: end the runs of an earlier connection that dropped, so two
        runners never share the board's cores (and none stays blocked on a dead pipe)."""
        for mark in list(self._lost_runs):
            if not self._kill(mark):
                return  # this connection failed too; the next one tries again
            self._lost_runs.remove(mark)
            self.journal.remove(mark)
            logger.debug("ended the run of a lost connection on %s (pid %s)", self.where, mark[0])

    # ---- files -----------------------------------------------------------------------------

    def push_many(self, pairs: Sequence[tuple[Path, str]]) -> int:
        """Upload each (local, remote) pair unless the device has the same content; returns
        how many were uploaded. Each upload goes to a temporary name, then is renamed, so a
        dropped connection never leaves a half file under the real name."""
        wanted: dict[str, tuple[Path, str]] = {}
        for local, remote in pairs:
            wanted[remote] = (local, self._local_hash(local))
        unsure = [r for r, (_, sha) in wanted.items() if self._remote_sha.get(r) != sha]
        if not unsure:
            return 0
        there = self._remote_hashes(unsure)
        todo = [r for r in unsure if there.get(r) != wanted[r][1]]
        for r in unsure:
            if r not in todo:
                self._remote_sha[r] = wanted[r][1]
        if not todo:
            return 0
        parents = sorted({posixpath.dirname(r) for r in todo} - {""})
        for chunk in _chunks(parents):
            res = self.run(["mkdir", "-p", "--", *chunk], self.connect_timeout_s + 20)
            if res.exit_code != 0:
                raise DeviceError(f"cannot create {chunk[0]} on {self.where}: {res.stderr.strip()[:200]}",
                                  "set connection.workdir to a writable directory")
        sftp = self.sftp()
        for remote in todo:
            local, sha = wanted[remote]
            tmp = f"{remote}.part-{uuid.uuid4().hex[:8]}"
            try:
                sftp.put(str(local), tmp)
                try:
                    sftp.posix_rename(tmp, remote)
                except OSError:  # servers without the posix-rename extension
                    res = self.run(["mv", "-f", "--", tmp, remote], 60)
                    if res.exit_code != 0:  # the old file would stay, measured as the new one
                        raise DeviceError(f"cannot put {local.name} in place as {remote} on {self.where}: "
                                          f"{res.stderr.strip()[:200] or f'mv exited with {res.exit_code}'}",
                                          "check permissions in connection.workdir")
            except DeviceError:
                self._discard(tmp)
                raise
            except Exception as exc:
                if self._client is None or self._wait_inactive(self._client, 1.0):
                    self.close()
                    err = DeviceError(f"lost the SSH connection to {self.where} while uploading {local.name}",
                                      "check that the board is up (it may have rebooted); re-run, "
                                      "collection resumes with what is missing")
                    raise err from None
                self._discard(tmp)
                free_kb = self._free_kb(posixpath.dirname(remote))
                if free_kb is not None and free_kb * 1024 < local.stat().st_size + (1 << 20):
                    # sftp-server reports ENOSPC as a bare "Failure": say what it was
                    raise DeviceError(f"cannot upload {local.name} to {remote} on {self.where}: No space left "
                                      f"on device ({free_kb} KB free there)",
                                      "free space on the board (latbench's models are under "
                                      f"{self.workdir}/models), or set connection.workdir to a disk with "
                                      "room") from None
                raise DeviceError(f"cannot upload {local.name} to {remote} on {self.where}: "
                                  f"{type(exc).__name__}: {exc}"[:400],
                                  "check free space and permissions in connection.workdir") from None
            self._remote_sha[remote] = sha
            self.uploads += 1
        return len(todo)

    def _free_kb(self, directory: str) -> int | None:
        """Free space (KB) of the filesystem holding `directory`, or None when it cannot be read."""
        try:
            res = self.run(["df", "-Pk", "--", directory], 30)
        except DeviceError:
            return None
        fields = res.stdout.strip().splitlines()[-1].split() if res.exit_code == 0 and res.stdout.strip() else []
        return int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None

    def _discard(self, tmp: str) -> None:
        try:
            if self._sftp is not None:
                self._sftp.remove(tmp)
        except Exception:
            pass

    def _local_hash(self, local: Path) -> str:
        try:
            st = local.stat()
        except OSError as exc:
            raise DeviceError(f"cannot read {local}: {exc.strerror}", "export the model again") from None
        key = (str(local.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._local_sha:
            self._local_sha[key] = sha256_file(local)
        return self._local_sha[key]

    def _remote_hashes(self, remotes: list[str]) -> dict[str, str]:
        """sha256 of each remote file that exists, one command per chunk of paths."""
        found: dict[str, str] = {}
        for chunk in _chunks(remotes):
            res = self.run(["sh", "-c", _HASH_SCRIPT, "sh", *chunk], self.connect_timeout_s + 60)
            lines = res.stdout.splitlines()
            if res.exit_code != 0 or len(lines) != len(chunk):
                continue  # no sha256sum on the board: upload everything in this chunk
            for remote, line in zip(chunk, lines):
                digest = line.split()[0] if line.split() else "-"
                if len(digest) == 64:
                    found[remote] = digest
        return found

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
        try:
            self.sftp().get(remote, str(tmp))
            os.replace(tmp, local)
        except DeviceError:
            raise
        except FileNotFoundError:
            if not local.parent.is_dir():
                raise DeviceError(f"cannot download {remote} into {local.parent}: no such folder here",
                                  "create it, or pass another path") from None
            raise DeviceError(f"{remote} does not exist on {self.where}",
                              "check the path; the runner may have failed before writing it") from None
        except Exception as exc:
            raise DeviceError(f"cannot download {remote} from {self.where}: {type(exc).__name__}: {exc}"[:400],
                              "check the connection and free space here") from None
        finally:
            tmp.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove the work directory from the board (models, runner, batch files)."""
        wd = self.workdir
        if len([p for p in wd.split("/") if p]) < 2 or wd == self._remote_home():
            raise DeviceError(f"refusing to remove the work directory {wd!r} on {self.where}",
                              "set connection.workdir to a dedicated directory such as /tmp/latbench")
        res = self.run(["rm", "-rf", "--", wd], 120)
        if res.exit_code != 0:
            raise DeviceError(f"cannot remove {wd} on {self.where}: {res.stderr.strip()[:200]}",
                              "remove it by hand over ssh")
        self._remote_sha.clear()

    # ---- doctor ----------------------------------------------------------------------------

    def device_info(self) -> dict:
        """What `latbench doctor` shows (the keys of `Transport.device_info`, plus reachable,
        auth and host_key). Connection problems come back as ``error`` and ``hint``."""
        info: dict = {"transport": "ssh", "address": self.where, "reachable": False, "auth": False}
        try:
            if self._client is None:
                self.connect()
            else:
                self._ensure()
        except DeviceError as exc:
            stage = getattr(exc, "stage", "reach")
            info["reachable"] = None if stage == "not_tried" else stage != "reach"
            info["auth"] = stage == "setup"
            info["host_key"] = {"unknown_host": "unknown", "changed_host": "changed",
                                "revoked_host": "revoked"}.get(
                stage, "ok" if stage in ("auth", "setup") else None)
            info["error"], info["hint"] = exc.message, exc.hint
            return info
        info.update(reachable=True, auth=True, host_key="ok", workdir=self.workdir, python_command=self.python())
        res = self.run(["sh", "-c", _INFO_SCRIPT, "sh", self.workdir, self.python()], 30)
        info.update(parse_device_info(res.stdout))
        return info


def parse_cpu_list(text: str) -> list[int] | None:
    """Linux's core list ("0-3,6") as [0, 1, 2, 3, 6]; None when it is not one."""
    cores: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        cores.extend(range(int(lo), int(hi or lo) + 1))
    return cores or None


def parse_device_info(text: str) -> dict:
    """Read the tab-separated lines of `_INFO_SCRIPT` into doctor's fields."""
    out: dict = {"model": None, "os": None, "cores": None, "online_cpus": None, "governors": {}, "frequencies_khz": {},
                 "max_frequencies_khz": {}, "temperatures_c": {}, "free_bytes": None, "python": None}
    cpu_model = None
    cores: dict[str, list[int] | None] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        tag, vals = parts[0], parts[1:]
        if tag == "model" and vals and vals[0].strip():
            out["model"] = vals[0].strip()
        elif tag == "cpumodel" and vals and vals[0].strip():
            cpu_model = vals[0].strip()
        elif tag == "uname" and vals:
            out["os"] = vals[0].strip() or None
        elif tag == "cores" and vals and vals[0].strip().isdigit():
            out["cores"] = int(vals[0])
        elif tag in ("online", "allowed") and vals and vals[0].strip():
            cores[tag] = parse_cpu_list(vals[0].strip())
        elif tag == "cpu" and len(vals) == 4:
            cpu, gov, cur, mx = vals
            if gov:
                out["governors"][cpu] = gov
            if cur.isdigit():
                out["frequencies_khz"][cpu] = int(cur)
            if mx.isdigit():
                out["max_frequencies_khz"][cpu] = int(mx)
        elif tag == "temp" and len(vals) == 3 and vals[2].lstrip("-").isdigit():
            # zones may share a type (two "acpitz"): one must not hide the other's heat
            zone, kind, value = vals[0], vals[1].strip() or vals[0], int(vals[2])
            name = kind if kind not in out["temperatures_c"] else f"{kind} ({zone})"
            out["temperatures_c"][name] = value / 1000.0 if abs(value) > 200 else float(value)
        elif tag == "df" and vals:
            fields = vals[0].split()
            if len(fields) >= 6 and fields[-3].isdigit():
                out["free_bytes"] = int(fields[-3]) * 1024
        elif tag == "python" and vals and vals[0].strip():
            out["python"] = vals[0].strip()
    if out["model"] is None:
        out["model"] = cpu_model or out["os"]
    # The cores a process may pin itself to: online, and in this login's affinity (a cpuset).
    sets = [set(c) for c in cores.values() if c]
    if sets:
        out["online_cpus"] = sorted(set.intersection(*sets))
    out["max_temperature_c"] = max(out["temperatures_c"].values()) if out["temperatures_c"] else None
    return out
