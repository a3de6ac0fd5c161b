"""The `adb` transport: an Android phone reached with adb-shell, over TCP (``adb tcpip 5555``,
then ``address: <phone-ip>:5555``) or USB (``usb: true``, needs the ``usb`` extra: libusb1).

adb shell v1, which adb-shell speaks, has no exit status and merges stderr into stdout. So
each command goes out as one line that sends its stderr to a file in the work directory, then
prints a marker with ``$?`` and that file; the three are taken apart here. Every word of a
command is quoted with `shlex.join`.

adb-shell has three timeouts, and its defaults end long benchmark runs early
(JeffLIrion/adb_shell#209): ``transport_timeout_s`` bounds one socket wait, so a benchmark that
prints nothing for longer fails; ``read_timeout_s`` (default 10 s) bounds the wait for one
expected packet; ``timeout_s`` bounds the whole command but is checked only when a packet
arrives. A run sets all three to its own timeout plus a grace, and the command runs under the
phone's ``timeout`` as well, so a hung benchmark is killed on the phone instead of left running.

``cpu_mask`` is applied by the tool runners (``taskset MASK benchmark_model ...``); the
transport only checks at connect that the phone has ``taskset``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Sequence

from latbench.errors import DeviceError, Interrupted, ProfileError
from latbench.profiles import DeviceProfile
from latbench.transports.base import CommandResult, Transport, whole_lines
from latbench.transports.remote_runs import PID_PREFIX, command_stdout, kill_argv, run_mark, shell_missed
from latbench.transports.run_journal import Mark, run_label

log = logging.getLogger("latbench.adb")

DEFAULT_WORKDIR = "/data/local/tmp/latbench"
DEFAULT_KEY = "~/.android/adbkey"
DEFAULT_PORT = 5555
#: Host-side slack over the phone-side `timeout`, so the phone's kill is what normally ends a run.
_GRACE_S = 15.0
#: `timeout -k`: SIGKILL this long after the SIGTERM.
_KILL_AFTER_S = 5
#: Shortest wait for any file transfer packet (models are pushed over Wi-Fi).
_MIN_IO_TIMEOUT_S = 30.0
_HASHERS = {"sha256sum": hashlib.sha256, "md5sum": hashlib.md5}
_HASH_LINE = re.compile(r"^([0-9a-f]{64}|[0-9a-f]{32}) [ *](.+)$")
_DIR_MARK = "@@dir\t"

# One command at connect: create the work directory; check that a file can be written there
# (exit 3: an existing directory on a read-only filesystem passes `mkdir -p`, and each later
# command, which sends its stderr to a file there, would fail oddly; printf, not `:`, whose
# failed redirection ends sh at once) and run from there (not on a noexec mount such as
# /sdcard, where a pushed tool cannot start); say which tools the phone has.
_SETUP_SCRIPT = ('mkdir -p "$1" || exit 1; f="$1/.latbench-probe-$$"; '
                 'printf "exit 0\\n" > "$f" || exit 3; chmod 700 "$f" 2>/dev/null; '
                 '"$f" >/dev/null 2>&1 && echo "exec ok"; rm -f "$f"; '
                 'for t in sha256sum md5sum timeout taskset; do '
                 'command -v "$t" >/dev/null 2>&1 && echo "have $t"; done; exit 0')
# One command for the hashes of every file in several directories; $0 = sha256sum or md5sum.
_HASH_DIRS_SCRIPT = ('for d do printf "@@dir\\t%s\\n" "$d"; '
                     'cd "$d" 2>/dev/null && "$0" ./* 2>/dev/null; done; exit 0')
# Everything `latbench doctor` shows about the phone, in one command; $1 = the work directory.
_INFO_SCRIPT = r"""
for p in ro.product.model ro.build.version.release ro.product.cpu.abi; do
  printf 'prop\t%s\t%s\n' "$p" "$(getprop "$p" 2>/dev/null)"
done
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  printf 'cpu\t%s\t%s\t%s\t%s\t%s\t%s\n' "${c##*/}" "$(cat "$c/online" 2>/dev/null)" \
    "$(cat "$c/cpufreq/scaling_governor" 2>/dev/null)" "$(cat "$c/cpufreq/scaling_cur_freq" 2>/dev/null)" \
    "$(cat "$c/cpufreq/scaling_min_freq" 2>/dev/null)" "$(cat "$c/cpufreq/scaling_max_freq" 2>/dev/null)"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] && printf 'temp\t%s\t%s\t%s\n' "${z##*/}" "$(cat "$z/type" 2>/dev/null)" \
    "$(cat "$z/temp" 2>/dev/null)"
done
printf 'df\t%s\n' "$(df -Pk "$1" 2>/dev/null | tail -n 1)"
exit 0
"""
_PROPS = {"ro.product.model": "model", "ro.build.version.release": "android_version",
          "ro.product.cpu.abi": "abi"}


def _require_adb_shell() -> None:
    if importlib.util.find_spec("adb_shell") is None:
        raise DeviceError("the adb transport needs adb-shell, which is not installed",
                          "reinstall latbench (pip install -e .), or pip install adb-shell")


#: TCP keepalive on the adb socket: a phone that leaves the Wi-Fi (or loses power) sends no
#: FIN or RST, and a benchmark prints nothing for minutes, so without probes a run would wait
#: its whole timeout (timeout_s, 30 min in the templates) before the retry. Probes start after
#: this many idle seconds, one every _KEEPALIVE_INTERVAL_S; _KEEPALIVE_COUNT unanswered = gone.
#: (TCP_KEEPIDLE on Linux and Android, TCP_KEEPALIVE on macOS.)
_KEEPALIVE_IDLE_S = 15
_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_COUNT = 4
#: The same bound for data the phone never acknowledges (TCP_USER_TIMEOUT, Linux).
_SILENT_LINK_S = _KEEPALIVE_IDLE_S + _KEEPALIVE_INTERVAL_S * _KEEPALIVE_COUNT


def _keep_alive(sock: socket.socket) -> None:
    """Turn on TCP keepalive (and the unacknowledged-data timeout) where the OS has them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", _KEEPALIVE_IDLE_S), ("TCP_KEEPALIVE", _KEEPALIVE_IDLE_S),
                        ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL_S), ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
                        ("TCP_USER_TIMEOUT", _SILENT_LINK_S * 1000)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


@functools.cache
def _tcp_transport_class():
    """adb-shell's TCP transport with three fixes for long sessions: a connection closed by the
    phone raises at once (adb-shell would spin on empty reads until its read timeout), a link
    that went silent (Wi-Fi lost: no FIN, no RST) raises after about 35 s of TCP keepalive
    (_SILENT_LINK_S) instead of after the run's whole timeout, and a write sends every byte (its socket is
    non-blocking and a partial send went unnoticed)."""
    from adb_shell.transport.tcp_transport import TcpTransport

    class _TcpTransport(TcpTransport):
        def connect(self, transport_timeout_s: float | None) -> None:
            super().connect(transport_timeout_s)
            _keep_alive(self._connection)

        def _silent(self, exc: TimeoutError) -> ConnectionAbortedError:
            return ConnectionAbortedError(
                f"{self._host}:{self._port} stopped answering: no TCP acknowledgement for about "
                f"{_SILENT_LINK_S} s (the phone left the network, slept or lost power)")

        def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
            try:
                data = super().bulk_read(numbytes, transport_timeout_s)
            except TimeoutError as exc:  # ETIMEDOUT from recv: keepalive gave up (not adb-shell's own)
                raise self._silent(exc) from exc
            if not data:
                raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
            return data

        def bulk_write(self, data: bytes, transport_timeout_s: float | None) -> int:
            view, sent = memoryview(data), 0
            try:
                while sent < len(view):
                    sent += super().bulk_write(view[sent:], transport_timeout_s)
            except TimeoutError as exc:  # ETIMEDOUT from send: TCP_USER_TIMEOUT gave up
                raise self._silent(exc) from exc
            return sent

    return _TcpTransport


@functools.cache
def _device_class(usb: bool):
    """adb-shell's AdbDevice (or AdbDeviceUsb) with a push that fails at once when the phone
    refuses it. adbd answers a failed write (a full disk) with FAIL at once, then reads and
    drops DATA up to DONE (AOSP file_sync_service.cpp, handle_send_file); adb-shell waits for
    OKAY after each chunk and throws that FAIL away, so a push of more than a chunk or so
    stalled for the whole io timeout and was reported as a dead connection, never as the
    error the phone gave."""
    from adb_shell import constants, exceptions as ae
    from adb_shell.adb_device import AdbDevice
    from adb_shell.adb_message import AdbMessage

    if usb:
        from adb_shell.adb_device import AdbDeviceUsb as base
    else:
        base = AdbDevice

    class _Device(base):
        def _filesync_flush(self, adb_info, filesync_info):
            self._io_manager.send(AdbMessage(constants.WRTE, adb_info.local_id, adb_info.remote_id,
                                             filesync_info.send_buffer[:filesync_info.send_idx]), adb_info)
            filesync_info.send_idx = 0
            while True:
                cmd, data = self._read_until([constants.OKAY, constants.WRTE, constants.CLSE], adb_info)
                if cmd == constants.CLSE:
                    raise ae.PushFailedError("the phone ended the transfer")
                if cmd == constants.WRTE:  # _read_until acknowledged it
                    filesync_info.recv_buffer += data
                failure = _sync_failure(bytes(filesync_info.recv_buffer))
                if failure is not None:
                    # adbd waits for DONE, which will not come: close the stream, keep the connection
                    self._io_manager.send(AdbMessage(constants.CLSE, adb_info.local_id, adb_info.remote_id),
                                          adb_info)
                    raise ae.PushFailedError(failure)
                if cmd == constants.OKAY and not filesync_info.recv_buffer.startswith(b"FAIL"):
                    return  # (a FAIL whose message has not all come yet: read on)

    return _Device


class _RanOutOfTime(Exception):
    """A command ran past the host's limit for it while the phone's shell still held it."""


def _sync_failure(received: bytes) -> str | None:
    """The message of a whole sync FAIL packet at the start of `received`, else None."""
    if len(received) < 8 or received[:4] != b"FAIL":
        return None
    length = int.from_bytes(received[4:8], "little")
    if len(received) < 8 + length:
        return None
    return received[8:8 + length].decode("utf-8", "replace")


def split_address(address: str, source: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 5555) or ``[v6-address]:port``."""
    host, port = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif address.count(":") == 1:
        host, port = address.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProfileError(f"{source}: connection setting 'address' is {address!r}, not host:port",
                           "set address: <phone-ip>:5555 (the port given to `adb tcpip`)")
    return host, int(port)


def _hash_file(path: Path, algo: str) -> str:
    digest = _HASHERS[algo]()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ADBTransport(Transport):
    """An Android phone over adb. Reconnects on its own when an earlier connection dropped."""

    def __init__(self, profile: DeviceProfile):
        super().__init__(profile)
        conn = profile.connection
        src = profile.source or profile.name
        self.usb: bool = bool(conn.get("usb", False))
        self.serial: str | None = conn.get("serial")
        self.address: str | None = conn.get("address")
        if self.usb:
            self.host, self.port = None, None
        elif self.address:
            self.host, self.port = split_address(self.address, src)
        else:
            hint = ("add `usb: true` to connect over USB" if self.serial else
                    "set address: <phone-ip>:5555 (after `adb tcpip 5555`), or usb: true")
            raise ProfileError(f"{src}: an adb profile needs connection.address or connection.usb", hint)
        self.key_path = Path(os.path.expanduser(conn.get("adb_key") or DEFAULT_KEY))
        self.auth_timeout_s = float(conn.get("auth_timeout_s", 30))
        self.connect_timeout_s = float(conn.get("connect_timeout_s", 10))
        self.io_timeout_s = max(self.connect_timeout_s, _MIN_IO_TIMEOUT_S)
        self._workdir: str = posixpath.normpath(conn.get("workdir") or DEFAULT_WORKDIR)
        if not self._workdir.startswith("/"):
            raise ProfileError(f"{src}: connection setting 'workdir' is {self._workdir!r}, not an "
                               "absolute path", f"use an absolute path such as {DEFAULT_WORKDIR}")
        self.cpu_mask: str | None = conn.get("cpu_mask")  # checked by latbench.profiles
        #: progress(remote, bytes_done, bytes_total) during each upload; the CLI sets it.
        self.progress: Callable[[str, int, int], None] | None = None
        #: on_auth_prompt(message) when the phone must accept our key; default: a log warning.
        self.on_auth_prompt: Callable[[str], None] | None = None
        #: files actually uploaded by this transport (not skipped); for reports and tests
        self.uploads = 0
        self._device = None
        self._lost_runs: list[tuple[str, str, str]] = []  # run marks of dropped connections
        self._connected_once = False
        self._prompted = False
        self._tools: set[str] = set()
        self.workdir_exec: bool | None = None
        self._dir_hashes: dict[str, dict[str, str]] = {}
        self._local_hashes: dict[tuple[str, int, int, str], str] = {}

    # ---- connection ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        if self.usb:
            return f"usb:{self.serial}" if self.serial else "the phone on USB"
        return f"{self.host}:{self.port}"

    @property
    def workdir(self) -> str:
        return self._workdir

    @property
    def hasher(self) -> str | None:
        """The checksum tool used to skip pushes (sha256sum, else md5sum), None without one."""
        return next((h for h in _HASHERS if h in self._tools), None)

    def connect(self) -> None:
        """Open the adb connection with the RSA key (the phone may ask to allow it), then create
        the work directory and see which tools the phone has."""
        _require_adb_shell()
        self.close()
        signer = self._signer()
        device = self._make_device()
        self._prompted = False
        try:
            device.connect(rsa_keys=[signer], transport_timeout_s=self.connect_timeout_s,
                           auth_timeout_s=self.auth_timeout_s, read_timeout_s=self.connect_timeout_s,
                           auth_callback=self._auth_prompt)
        except Exception as exc:  # adb-shell and socket errors: one clear line each
            try:
                device.close()
            except Exception:
                pass
            raise self._connect_error(exc) from None
        self._device = device
        self._connected_once = True
        for mark in list(self._lost_runs):  # a run of a connection that dropped may still time
            if not self._kill(mark):  # it stays listed, with the rest, and this connection closed
                err = DeviceError(f"lost the adb connection to {self.where} again while ending a run "
                                  f"(pid {mark[0]}) a dropped connection left",
                                  "check that the phone is awake and not overloaded; re-run (collection "
                                  "resumes with what is missing, and ends that run first)")
                err.stage = "setup"  # reached and logged in: `latbench doctor` says so
                raise err
            self._lost_runs.remove(mark)
            self.journal.remove(mark)
        res = self._exec(shlex.join(["sh", "-c", _SETUP_SCRIPT, "sh", self.workdir]),
                         self.connect_timeout_s + _GRACE_S, "creating the work directory",
                         split_stderr=False)
        if res.exit_code != 0:
            what = "cannot write to" if res.exit_code == 3 else "cannot create"
            full = "No space left on device" in res.stdout
            err = DeviceError(f"{what} the work directory {self.workdir} on {self.where}: "
                              f"{res.stdout.strip()[:200]}",
                              (f"free space on the phone (latbench's models are under {self.workdir}/models: "
                               f"adb shell rm -r {shlex.quote(self.workdir + '/models')})") if full else
                              f"set connection.workdir in {self._src} to a writable directory "
                              f"such as {DEFAULT_WORKDIR}")
            err.stage = "setup"  # reached and logged in: `latbench doctor` says so
            raise err
        lines = res.stdout.splitlines()
        self._tools = {line[5:].strip() for line in lines if line.startswith("have ")}
        #: whether a file in the work directory can be executed (False on a noexec mount)
        self.workdir_exec = "exec ok" in lines
        if self.cpu_mask and "taskset" not in self._tools:
            err = DeviceError(f"cpu_mask is set but {self.where} has no taskset",
                              f"remove connection.cpu_mask from {self._src}")
            err.stage = "setup"
            raise err

    @property
    def _src(self) -> str:
        return self.profile.source or self.profile.name

    def _make_device(self):
        if not self.usb:
            return _device_class(usb=False)(_tcp_transport_class()(self.host, self.port),
                                            default_transport_timeout_s=self.connect_timeout_s)
        extra_hint = ("pip install -e .[usb] (or pip install 'adb-shell[usb]'), or use adb over "
                      "Wi-Fi: `adb tcpip 5555` and connection.address: <phone-ip>:5555")
        if importlib.util.find_spec("usb1") is None:
            raise DeviceError("adb over USB needs the libusb1 package, which is not installed", extra_hint)
        from adb_shell import exceptions as ae

        try:
            return _device_class(usb=True)(serial=self.serial, default_transport_timeout_s=self.connect_timeout_s)
        except ae.InvalidTransportError:
            raise DeviceError("adb over USB cannot load libusb (the libusb1 package is there, "
                              "the libusb-1.0 library is not)",
                              "install libusb-1.0 (apt install libusb-1.0-0), or use adb over "
                              "Wi-Fi") from None
        except ae.UsbDeviceNotFoundError:
            err = DeviceError(f"no phone{' with serial ' + self.serial if self.serial else ''} on USB",
                              "plug it in, enable USB debugging in Developer options, and stop the adb "
                              "server that may hold it (`adb kill-server`)")
            err.stage = "reach"
            raise err from None

    def _signer(self):
        """The user's adb key (the one `adb` uses, so a phone that trusts adb trusts latbench);
        created when missing, readable only by the user."""
        from adb_shell.auth.keygen import keygen, write_public_keyfile
        from adb_shell.auth.sign_cryptography import CryptographySigner

        key, pub = self.key_path, Path(f"{self.key_path}.pub")
        fix = (f"point connection.adb_key in {self._src} to your adb key (~/.android/adbkey), "
               "or move this file aside and latbench creates a new one")
        try:
            if not key.exists():
                key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # mode before content
                keygen(str(key))
                log.warning("created a new adb key %s; the phone will ask to allow it", key)
            elif not pub.exists():
                write_public_keyfile(str(key), str(pub))
            return CryptographySigner(str(key))
        except OSError as exc:
            raise DeviceError(f"cannot read or create the adb key {key}: {exc.strerror or exc}",
                              fix) from None
        except (ValueError, TypeError) as exc:
            raise DeviceError(f"{key} is not a usable adb RSA private key ({exc})"[:300], fix) from None

    def _auth_prompt(self, _io_manager) -> None:
        """adb-shell calls this when the phone knows none of our keys and gets our public key."""
        self._prompted = True
        message = (f"{self.where} does not know the adb key {self.key_path}.pub: accept the RSA key "
                   f"prompt on the phone within {self.auth_timeout_s:g} s")
        (self.on_auth_prompt or log.warning)(message)

    def _connect_error(self, exc: BaseException) -> DeviceError:
        from adb_shell import exceptions as ae

        if isinstance(exc, DeviceError):
            return exc
        timeouts = (ae.AdbTimeoutError, ae.TcpTimeoutException, TimeoutError)
        stage = "reach"
        if self._prompted or isinstance(exc, ae.DeviceAuthError):
            stage = "auth"
            err = DeviceError(
                f"{self.where} did not accept latbench's adb key {self.key_path}.pub within "
                f"{self.auth_timeout_s:g} s",
                "unlock the phone and accept the RSA key prompt ('Allow USB debugging?', tick "
                "'Always allow from this computer'), then re-run; or raise "
                f"connection.auth_timeout_s in {self._src}")
        elif isinstance(exc, ConnectionRefusedError):
            err = DeviceError(f"nothing accepts adb connections at {self.where}",
                              "plug the phone in by USB and run `adb tcpip 5555` (needed again after "
                              f"each reboot), then check connection.address in {self._src}")
        elif isinstance(exc, timeouts):
            err = DeviceError(f"{self.where} is offline: no adb answer within {self.connect_timeout_s:g} s",
                              "check that the phone is awake, on this host's network and in adb TCP "
                              "mode (`adb tcpip 5555` since its last reboot); or raise "
                              f"connection.connect_timeout_s in {self._src}")
        elif isinstance(exc, socket.gaierror):
            err = DeviceError(f"cannot resolve the host name in {self.address!r}",
                              f"fix connection.address in {self._src} or use the phone's IP address")
        elif isinstance(exc, ConnectionError):
            err = DeviceError(f"{self.where} closed the adb connection during the handshake",
                              "the phone may be rebooting; wait, check `adb devices`, then re-run")
        elif isinstance(exc, (ae.InvalidResponseError, ae.InvalidCommandError, ae.InvalidChecksumError)):
            err = DeviceError(f"{self.where} does not speak the adb protocol ({_not_adb(exc)})",
                              f"check connection.address in {self._src}: the adb port is 5555 "
                              "unless `adb tcpip` was given another")
        elif isinstance(exc, (ae.UsbReadFailedError, ae.UsbWriteFailedError)):
            err = DeviceError(f"the USB link to {self.where} failed during the handshake ({exc})"[:300],
                              "re-plug the cable, stop other adb servers (`adb kill-server`), re-run")
        elif isinstance(exc, OSError):
            err = DeviceError(f"cannot reach {self.where}: {exc.strerror or exc}",
                              f"check the network and connection.address in {self._src}")
        elif type(exc).__name__ == "USBErrorBusy":  # libusb1's, raised through adb-shell's connect
            err = DeviceError(f"{self.where} is held by another program, most likely an adb server ({exc})",
                              "stop it with `adb kill-server`, then re-run (`adb devices` would start "
                              "it again)")
        elif type(exc).__name__ == "USBErrorAccess":
            err = DeviceError(f"no permission to open {self.where} on USB ({exc})",
                              "add a udev rule for the phone (Debian: apt install "
                              "android-sdk-platform-tools-common) and join the plugdev group, then "
                              "re-plug the cable")
        else:
            err = DeviceError(f"adb connection to {self.where} failed: {type(exc).__name__}: {exc}"[:300],
                              f"try `adb connect {self.address}` to see why" if self.address else
                              "try `adb devices` to see why")
        err.stage = stage
        return err

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            except Exception:
                pass
        self._device = None
        self._dir_hashes.clear()

    def _ensure(self):
        """The live device; reconnects when an earlier connection dropped."""
        if self._device is None:
            if not self._connected_once:
                raise DeviceError("the adb transport is not connected", "call connect() first")
            self.connect()
        return self._device

    def _call(self, action: str, fn):
        """Run `fn(device)`; adb-shell and socket errors become one DeviceError line. A broken
        connection is dropped, so the next call connects again."""
        from adb_shell import exceptions as ae

        device = self._ensure()
        try:
            return fn(device)
        except (ae.AdbCommandFailureException, ae.PushFailedError) as exc:
            raise DeviceError(f"{action} failed on {self.where}: {_reason(exc)}"[:400],
                              "check the path, free space (`latbench doctor`) and permissions "
                              "in connection.workdir") from None
        except (ae.AdbTimeoutError, ae.TcpTimeoutException, TimeoutError) as exc:
            self.close()
            raise DeviceError(f"no answer from {self.where} while {action} ({exc})"[:400],
                              "the phone may be asleep, hung or off the network; re-run (collection "
                              "resumes with what is missing), or raise timeout_s in the profile") from None
        except (OSError, ae.InvalidResponseError, ae.InvalidCommandError, ae.InvalidChecksumError,
                ae.AdbConnectionError, ae.UsbReadFailedError, ae.UsbWriteFailedError) as exc:
            self.close()
            raise DeviceError(f"lost the adb connection to {self.where} while {action} "
                              f"({type(exc).__name__}: {exc})"[:400],
                              "check that the phone is awake and reachable (it may have rebooted: "
                              "run `adb tcpip 5555` again); re-run, collection resumes with what "
                              "is missing") from None

    # ---- commands --------------------------------------------------------------------------

    def run(self, argv: list[str], timeout_s: float) -> CommandResult:
        """Run `argv` (each word quoted) on the phone, under its `timeout`."""
        if not argv:
            raise ValueError("run() needs a command")
        self._ensure()
        words = [str(a) for a in argv]
        limit_s = max(1, math.ceil(timeout_s))
        if "timeout" in self._tools:
            words = ["timeout", "-k", str(_KILL_AFTER_S), str(limit_s), *words]
        started = time.monotonic()
        res = self._exec(shlex.join(words), limit_s + _KILL_AFTER_S + _GRACE_S, f"running {argv[0]}",
                         label=run_label(argv))
        if res.exit_code in (124, 137) and "timeout" in self._tools and \
                time.monotonic() - started >= limit_s * 0.99:
            err = DeviceError(f"{argv[0]} took longer than {timeout_s:g} s on {self.profile.name}; killed",
                              "raise timeout_s in the profile or lower protocol.batch_size")
            err.partial_stdout = whole_lines(res.stdout)  # what finished before the limit is kept
            err.timed_out = True
            raise err
        if res.exit_code == 127 and shell_missed(argv[0], res.stderr):
            raise DeviceError(f"{argv[0]} not found on {self.profile.name}",
                              f"push it to the phone or fix its path in {self._src}")
        return res

    def _exec(self, command: str, timeout_s: float, action: str, *,
              split_stderr: bool = True, label: str | None = None) -> CommandResult:
        """Run one quoted command line through adb shell v1 and recover its exit status (and,
        with `split_stderr`, its stderr, kept apart in a file of the work directory); `label`
        names it in the journal (default: `action`)."""
        nonce = secrets.token_hex(6)
        mark = f"@@latbench-rc-{nonce}="
        if split_stderr:
            err = shlex.quote(f"{self.workdir}/.stderr-{nonce}")
            script = (f"{{ {command}; }} 2>{err}; rc=$?; echo; echo \"{mark}$rc\"; "
                      f"cat {err} 2>/dev/null; rm -f {err}")
        else:
            script = f"{{ {command}; }} 2>&1; rc=$?; echo; echo \"{mark}$rc\""
        script = PID_PREFIX + script  # so Ctrl-C can end what it started (`_kill`)
        chunks: list[bytes] = []  # bytes: a chunk may end inside a UTF-8 character
        journaled: list[Mark] = []  # the run's mark, once its pid line came
        first_line = [False]
        if self._device is not None:
            self.end_left_runs()

        def stream(device) -> str:  # streamed, so a lost connection still leaves what was printed
            from adb_shell import exceptions as ae

            started = time.monotonic()
            try:
                for chunk in device.streaming_shell(script, transport_timeout_s=timeout_s,
                                                    read_timeout_s=timeout_s, decode=False):
                    chunks.append(chunk)
                    if not first_line[0] and b"\n" in chunk:  # the pid line, once
                        first_line[0] = True
                        if (run := run_mark(b"".join(chunks))) is not None:
                            journaled.append(run)
                            self.journal.add(run, label or action)
                    if time.monotonic() - started > timeout_s:
                        raise _RanOutOfTime()
            except (ae.AdbTimeoutError, ae.TcpTimeoutException, TimeoutError):
                # adb-shell's waits are the run's whole limit: one ending is a run too long, or a
                # link gone dead (then the kill below cannot be sent either)
                if time.monotonic() - started >= timeout_s * 0.99 and run_mark(b"".join(chunks)):
                    raise _RanOutOfTime() from None
                raise
            return command_stdout(bytearray(b"".join(chunks)))

        try:
            out = self._call(action, stream)
        except _RanOutOfTime:  # the phone has no `timeout` (older toybox), or it did not act
            printed = whole_lines(command_stdout(bytearray(b"".join(chunks))))
            if self._kill(run_mark(b"".join(chunks))):
                err = DeviceError(f"{action} on {self.where} took longer than {timeout_s:g} s; ended",
                                  "raise timeout_s in the profile or lower protocol.batch_size")
                err.timed_out = True
            else:  # the kill could not be sent: the connection is what broke (ended on reconnect)
                err = DeviceError(f"no answer from {self.where} while {action} (nothing within {timeout_s:g} s)",
                                  "the phone may be asleep, hung or off the network; re-run (collection "
                                  "resumes with what is missing)")
            err.partial_stdout = printed
            raise err from None
        except DeviceError as exc:
            exc.partial_stdout = whole_lines(command_stdout(bytearray(b"".join(chunks))))
            lost = run_mark(b"".join(chunks))
            if self._device is None and lost is not None:  # the connection broke: end it on reconnect
                self._lost_runs.append(lost)
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in a collection: end the phone's run too
            self._kill(run_mark(b"".join(chunks)))
            raise Interrupted(whole_lines(command_stdout(bytearray(b"".join(chunks)))),
                              *exc.args[:1]) from None
        finally:
            for run in journaled:
                if run not in self._lost_runs:
                    self.journal.remove(run)  # ended, or killed: nothing left for the next process
        return split_output(out, mark, f"{action} on {self.where}")

    def _kill(self, mark: Mark | None) -> bool:
        """End what a run's shell started (its session: a tool under `timeout` has a group of its
        own) with a command on a new stream; failing that, drop the connection (adbd then hangs
        up the shell). False when there was a run and the kill could not be sent."""
        if mark is not None and self._device is not None:
            if self._end(mark) is not None:
                return True
            if mark not in self._lost_runs:
                self._lost_runs.append(mark)  # the next connection ends it
        self.close()
        return mark is None

    def _end(self, mark: Mark, strict: bool = False) -> str | None:
        try:
            printed = self._device.shell(
                shlex.join(kill_argv(mark, strict)),
                transport_timeout_s=30, read_timeout_s=30, timeout_s=30)  # as over SSH
        except Exception:  # noqa: BLE001 - the connection may be what broke
            return None
        return printed if isinstance(printed, str) else bytes(printed).decode("utf-8", "replace")

    # ---- files -----------------------------------------------------------------------------

    def push_many(self, pairs: Sequence[tuple[Path, str]]) -> int:
        """Upload each (local, remote) pair unless the phone has the same content; returns how
        many were uploaded. What a directory holds is hashed on the phone once per connection,
        in one command for all the directories asked about."""
        self._ensure()
        algo = self.hasher
        if algo is not None:
            self._learn_dirs(sorted({posixpath.dirname(r) for _, r in pairs}), algo)
        uploaded = 0
        for local, remote in pairs:
            local = Path(local)
            directory, name = posixpath.split(remote)
            digest = self._local_hash(local, algo) if algo else None
            if digest is not None and self._dir_hashes.get(directory, {}).get(name) == digest:
                continue
            self._upload(local, remote)
            if digest is not None:
                self._dir_hashes.setdefault(directory, {})[name] = digest
            uploaded += 1
        return uploaded

    def _upload(self, local: Path, remote: str) -> None:
        try:
            st = local.stat()
        except OSError as exc:
            raise DeviceError(f"cannot read {local}: {exc.strerror}", "export the model again") from None
        mode = stat.S_IFREG | stat.S_IMODE(st.st_mode) | stat.S_IRUSR | stat.S_IWUSR
        done = 0

        def progress(_path: str, chunk: int, total: int) -> None:
            nonlocal done
            done += chunk
            if self.progress is not None:
                self.progress(remote, done, total)

        self._call(f"pushing {local.name} to {remote}",
                   lambda d: d.push(str(local), remote, st_mode=mode, mtime=int(st.st_mtime),
                                    progress_callback=progress, transport_timeout_s=self.io_timeout_s,
                                    read_timeout_s=self.io_timeout_s))
        self.uploads += 1

    def _learn_dirs(self, directories: list[str], algo: str) -> None:
        todo = [d for d in directories if d and d not in self._dir_hashes]
        if not todo:
            return
        # Every model ever pushed is hashed, again after each reconnect: with whole networks
        # that is gigabytes at the speed of a phone's core, so allow as long as a batch may take.
        limit_s = max(self.io_timeout_s, float(self.profile.timeout_s))
        res = self._exec(shlex.join(["sh", "-c", _HASH_DIRS_SCRIPT, algo, *todo]),
                         limit_s + _GRACE_S, "hashing pushed files")
        self._dir_hashes.update(parse_dir_hashes(res.stdout, todo))

    def _local_hash(self, local: Path, algo: str) -> str:
        try:
            st = local.stat()
            key = (str(local.resolve()), st.st_size, st.st_mtime_ns, algo)
            if key not in self._local_hashes:
                self._local_hashes[key] = _hash_file(local, algo)
        except OSError as exc:
            raise DeviceError(f"cannot read {local}: {exc.strerror}", "export the model again") from None
        return self._local_hashes[key]

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
        try:
            self._call(f"pulling {remote}", lambda d: d.pull(
                remote, str(tmp), transport_timeout_s=self.io_timeout_s, read_timeout_s=self.io_timeout_s))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove the work directory from the phone (models, runner, batch files)."""
        wd = self.workdir
        if len([p for p in wd.split("/") if p]) < 2:
            raise DeviceError(f"refusing to remove the work directory {wd!r} on {self.where}",
                              f"set connection.workdir to a dedicated directory such as {DEFAULT_WORKDIR}")
        res = self.run(["rm", "-rf", wd], 120)
        if res.exit_code != 0:
            raise DeviceError(f"cannot remove {wd} on {self.where}: {res.stderr.strip()[:200]}",
                              "remove it by hand with `adb shell`")
        self._dir_hashes.clear()

    # ---- doctor ----------------------------------------------------------------------------

    def device_info(self) -> dict:
        """What `latbench doctor` shows: reachable, auth, model, Android version, ABI, cores,
        governors and frequencies, temperatures, free space in the work directory. Connection
        problems come back as ``error`` and ``hint`` instead of an exception."""
        info: dict = {"transport": "adb", "address": self.where, "reachable": False, "auth": False}
        try:
            if self._device is None:
                self.connect()
        except DeviceError as exc:
            stage = getattr(exc, "stage", "reach")
            info["reachable"] = stage != "reach"
            info["auth"] = stage == "setup"
            info["error"], info["hint"] = exc.message, exc.hint
            return info
        info.update(reachable=True, auth=True, workdir=self.workdir, hasher=self.hasher,
                    has_timeout="timeout" in self._tools, cpu_mask=self.cpu_mask,
                    workdir_exec=self.workdir_exec)
        try:
            res = self.run(["sh", "-c", _INFO_SCRIPT, "sh", self.workdir], 30)
        except DeviceError as exc:
            info["error"], info["hint"] = exc.message, exc.hint
            return info
        info.update(parse_device_info(res.stdout))
        return info


def _reason(exc: BaseException) -> str:
    """adb-shell puts the phone's FAIL message in args[0], sometimes as bytes."""
    arg = exc.args[0] if exc.args else ""
    if isinstance(arg, (bytes, bytearray)):
        arg = arg.decode("utf-8", "replace")
    return str(arg) or type(exc).__name__


def split_output(out: str, mark: str, what: str) -> CommandResult:
    """Take apart ``stdout, "\\n", mark + $?, "\\n", stderr`` as `_exec`'s command line prints it."""
    text = out.replace("\r\n", "\n")  # a pty on old phones turns \n into \r\n
    i = text.find("\n" + mark)
    if i < 0:
        raise DeviceError(f"{what} ended without an exit status (the shell or the connection died)",
                          "re-run; if it repeats, check the phone with `latbench doctor`")
    code_text, _, stderr = text[i + 1 + len(mark):].partition("\n")
    code = int(code_text) if code_text.strip().isdigit() else -1
    return CommandResult(code, text[:i], stderr)


def parse_dir_hashes(text: str, directories: Sequence[str]) -> dict[str, dict[str, str]]:
    """``@@dir\\t<dir>`` lines, each followed by sha256sum/md5sum lines of ``./<name>``."""
    found: dict[str, dict[str, str]] = {d: {} for d in directories}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith(_DIR_MARK):
            current = found.setdefault(line[len(_DIR_MARK):], {})
            continue
        m = _HASH_LINE.match(line)
        if current is not None and m and m.group(2).startswith("./") and "/" not in m.group(2)[2:]:
            current[m.group(2)[2:]] = m.group(1)
    return found


def parse_device_info(text: str) -> dict:
    """Read the tab-separated lines of `_INFO_SCRIPT` into doctor's fields (the names the ssh
    transport and `latbench doctor` use, plus Android's version, ABI and online cores)."""
    out: dict = {"model": None, "android_version": None, "abi": None, "cores": None,
                 "cores_online": None, "online_cpus": None, "governors": {}, "frequencies_khz": {},
                 "min_frequencies_khz": {}, "max_frequencies_khz": {}, "temperatures_c": {},
                 "free_bytes": None, "free_mb": None, "os": None}
    cores = online = 0
    online_cpus: list[int] = []
    for line in text.splitlines():
        tag, *vals = line.split("\t")
        if tag == "prop" and len(vals) == 2 and vals[0] in _PROPS:
            out[_PROPS[vals[0]]] = vals[1].strip() or None
        elif tag == "cpu" and len(vals) == 6:
            cpu, on, gov, cur, low, high = (v.strip() for v in vals)
            cores += 1
            online += on != "0"  # cpu0 has no `online` file: always on
            if on != "0" and cpu[3:].isdigit():
                online_cpus.append(int(cpu[3:]))
            if gov:
                out["governors"][cpu] = gov
            for key, value in (("frequencies_khz", cur), ("min_frequencies_khz", low),
                               ("max_frequencies_khz", high)):
                if value.isdigit():
                    out[key][cpu] = int(value)
        elif tag == "temp" and len(vals) == 3 and vals[2].strip().lstrip("-").isdigit():
            zone, kind, raw = vals[0], vals[1].strip() or vals[0], int(vals[2])
            name = kind if kind not in out["temperatures_c"] else f"{kind} ({zone})"
            out["temperatures_c"][name] = raw / 1000.0 if abs(raw) > 200 else float(raw)
        elif tag == "df" and vals:
            fields = vals[0].split()
            if len(fields) >= 5 and fields[-3].isdigit():
                out["free_bytes"] = int(fields[-3]) * 1024
                out["free_mb"] = int(fields[-3]) // 1024
    if out["android_version"]:
        out["os"] = f"Android {out['android_version']}" + (f" ({out['abi']})" if out["abi"] else "")
    if cores:
        # online_cpus, as the ssh and local transports give it: what doctor checks cpu_mask
        # and threads against (a phone takes big cores offline when idle or hot)
        out["cores"], out["cores_online"], out["online_cpus"] = cores, online, sorted(online_cpus)
    temps = out["temperatures_c"].values()
    out["max_temperature_c"] = max(temps) if temps else None
    return out


def _not_adb(exc: Exception) -> str:
    """What answered instead of adb, readably: adb-shell reports the first 4 bytes as an int
    ("Unknown command: 1347703880 = 'b'HTTP'' (arg0 = ...)")."""
    found = re.search(r"Unknown command: (\d+)", str(exc))
    if not found:
        return (str(exc) or type(exc).__name__)[:200]
    head = (int(found.group(1)) & 0xFFFFFFFF).to_bytes(4, "little").decode("ascii", "replace")
    if not (head.isprintable() and head.strip()):
        return "its answer is not an adb message"
    return f"it answered {head!r}..., not an adb message" + (" (an HTTP server?)" if head == "HTTP" else "")
