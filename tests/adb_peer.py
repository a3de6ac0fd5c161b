"""An ADB device for the tests: the real ADB wire protocol over TCP, with a shell on this host.

Written from AOSP's adb/protocol.txt and adb/SYNC.TXT. It stands in for a phone's
``adbd`` so that both Debian's ``adb`` client and adb-shell can talk to it:

- messages: a 24-byte little-endian header (command, arg0, arg1, data_length,
  data_check = byte sum of the payload, magic = command ^ 0xffffffff), then the payload;
- CNXN handshake (version 0x01000000, maxdata); the banner advertises no features, so
  clients fall back to shell v1 and sync v1;
- AUTH: a random 20-byte TOKEN; a SIGNATURE is checked with a real RSA PKCS#1 v1.5 /
  SHA-1 verification against the authorized keys (Android's adbkey.pub format); an unknown
  RSAPUBLICKEY is accepted only when ``allow_new_keys`` is set (the user tapping "Allow");
- streams: OPEN / OKAY / WRTE / CLSE with one WRTE in flight per stream;
- ``shell:<command>`` runs ``/bin/sh -c <command>`` in ``shell_cwd`` on this host, output
  and errors merged as in shell v1 (there is no exit status in v1);
- ``sync:`` STAT, LIST, SEND (DATA chunks, DONE with mtime), RECV, QUIT.

Every connection and stream has its own thread. ``go_offline()`` / ``come_back()`` drop all
connections and stop listening, then listen again on the same port, as a phone that reboots or
leaves the Wi-Fi would.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

A_VERSION = 0x01000000
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
TOKEN_SIZE = 20
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
_HEADER = struct.Struct("<6I")
_COMMANDS = (b"SYNC", b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"STLS")


def _wire(command: bytes) -> int:
    return struct.unpack("<I", command)[0]


_FROM_WIRE = {_wire(c): c for c in _COMMANDS}


class ProtocolError(Exception):
    """The other side broke the protocol; the connection is closed (protocol.txt: MUST)."""


@dataclass
class Message:
    command: bytes
    arg0: int
    arg1: int
    data: bytes = b""


def pack(command: bytes, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    wire = _wire(command)
    return _HEADER.pack(wire, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, wire ^ 0xFFFFFFFF) + data


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("the host closed the connection")
        buf += chunk
    return bytes(buf)


def read_message(sock: socket.socket, max_payload: int) -> Message:
    wire, arg0, arg1, length, check, magic = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if wire ^ 0xFFFFFFFF != magic:
        raise ProtocolError(f"bad magic {magic:#x} for command {wire:#x}")
    if wire not in _FROM_WIRE:
        raise ProtocolError(f"unknown command {wire:#x}")
    if length > max_payload:
        raise ProtocolError(f"payload of {length} bytes is over maxdata {max_payload}")
    data = _recv_exact(sock, length) if length else b""
    if sum(data) & 0xFFFFFFFF != check:
        raise ProtocolError(f"bad data checksum for {_FROM_WIRE[wire].decode()}")
    return Message(_FROM_WIRE[wire], arg0, arg1, data)


# ---- Android's RSA public key format (adbkey.pub) -----------------------------------------

def parse_android_pubkey(text: bytes | str) -> rsa.RSAPublicKey:
    """adbkey.pub: base64 of {u32 words, u32 n0inv, modulus LE, rr LE, u32 exponent}, then
    " user@host". n0inv and rr are checked, so a damaged key is refused."""
    if isinstance(text, str):
        text = text.encode()
    fields = text.rstrip(b"\0").split()
    if not fields:
        raise ValueError("empty public key")
    raw = base64.b64decode(fields[0], validate=True)
    if len(raw) < 12:
        raise ValueError("public key too short")
    words, n0inv = struct.unpack_from("<2I", raw)
    size = words * 4
    if len(raw) != 8 + 2 * size + 4:
        raise ValueError(f"public key of {len(raw)} bytes does not hold a {size * 8}-bit modulus")
    n = int.from_bytes(raw[8:8 + size], "little")
    rr = int.from_bytes(raw[8 + size:8 + 2 * size], "little")
    (e,) = struct.unpack_from("<I", raw, 8 + 2 * size)
    if (n * n0inv) % 2**32 != 2**32 - 1:
        raise ValueError("n0inv is not -1/n mod 2^32")
    if rr != pow(2, 2 * size * 8, n):
        raise ValueError("rr is not (2^bits)^2 mod n")
    return rsa.RSAPublicNumbers(e, n).public_key()


def signature_ok(key: rsa.RSAPublicKey, token: bytes, signature: bytes) -> bool:
    """adbd's check: RSA PKCS#1 v1.5 over the token taken as an already computed SHA-1 digest."""
    try:
        key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---- streams ------------------------------------------------------------------------------

class _StreamClosed(Exception):
    pass


class _Stream:
    """One end of an OPENed stream on the device side."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.ready = threading.Event()
        self.ready.set()  # protocol.txt: an OPEN also implies a READY from the opener
        self.closed = False

    def write(self, data: bytes) -> None:
        """WRTE in pieces of at most maxdata, each after the host's OKAY for the one before."""
        for i in range(0, len(data), self.conn.max_out):
            while not self.ready.wait(0.05):
                if self.closed or self.conn.dead:
                    raise _StreamClosed()
            if self.closed:
                raise _StreamClosed()
            self.ready.clear()
            self.conn.send(b"WRTE", self.local_id, self.remote_id, data[i:i + self.conn.max_out])

    def close(self) -> None:
        """Close from this side: CLSE, and forget the stream."""
        if not self.closed:
            self.closed = True
            self.conn.forget(self.local_id)
            try:
                self.conn.send(b"CLSE", self.local_id, self.remote_id)
            except _StreamClosed:
                pass
        self.on_closed()

    def on_data(self, data: bytes) -> None: ...

    def on_closed(self) -> None: ...

    def start(self) -> None: ...


class _ShellStream(_Stream):
    """``shell:<command>`` (v1): /bin/sh -c, stdout and stderr merged, no exit status."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int, command: str):
        super().__init__(conn, local_id, remote_id)
        peer = conn.peer
        self.command = command
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", command], cwd=str(peer.shell_cwd), env=peer.shell_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)

    def start(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name=f"adb-peer-shell-{self.local_id}").start()

    def _pump(self) -> None:
        fd = self.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, self.conn.max_out)
                if not chunk:
                    break
                self.write(chunk)
                on_output = self.conn.peer.on_output
                if on_output is not None and on_output(self.command, chunk) == "drop":
                    self.conn.kill()  # the cable came out after this much output
                    self.on_closed()
                    return
            self.proc.wait()
            self.close()
        except (_StreamClosed, OSError):
            self.on_closed()
        finally:
            self.proc.stdout.close()

    def on_data(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def on_closed(self) -> None:
        """The host hung up (or the connection died): hang up the command, as adbd does."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


class _SyncStream(_Stream):
    """``sync:``: 8-byte requests (id, little-endian length) carried inside WRTE payloads."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        super().__init__(conn, local_id, remote_id)
        self.buf = bytearray()
        self.cond = threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._serve, daemon=True, name=f"adb-peer-sync-{self.local_id}").start()

    def on_data(self, data: bytes) -> None:
        with self.cond:
            self.buf += data
            self.cond.notify_all()

    def on_closed(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _read(self, size: int) -> bytes:
        with self.cond:
            while len(self.buf) < size:
                if self.closed or self.conn.dead:
                    raise _StreamClosed()
                self.cond.wait(0.1)
            out = bytes(self.buf[:size])
            del self.buf[:size]
        return out

    def _request(self) -> tuple[bytes, int]:
        ident, length = struct.unpack("<4sI", self._read(8))
        return ident, length

    def _fail(self, message: str) -> None:
        data = message.encode()
        self.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _serve(self) -> None:
        try:
            while True:
                ident, length = self._request()
                if ident == b"QUIT":
                    break
                if length > 1024:
                    self._fail("path too long")
                    break
                path = self._read(length).decode("utf-8", "surrogateescape")
                self.conn.peer.sync_requests.append((ident.decode("ascii", "replace"), path))
                if ident == b"STAT":
                    self._stat(path)
                elif ident == b"LIST":
                    self._list(path)
                elif ident == b"SEND":
                    self._send(path)
                elif ident == b"RECV":
                    self._recv(path)
                else:
                    self._fail(f"unknown sync request {ident!r}")
                    break
            self.close()
        except _StreamClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the test through peer.errors
            self.conn.peer.errors.append(f"sync: {type(exc).__name__}: {exc}")
            self.close()

    def _stat(self, path: str) -> None:
        try:
            st = os.lstat(path)
            values = (st.st_mode, st.st_size, int(st.st_mtime))
        except OSError:
            values = (0, 0, 0)
        self.write(b"STAT" + struct.pack("<3I", *(v & 0xFFFFFFFF for v in values)))

    def _list(self, path: str) -> None:
        out = bytearray()
        try:
            names = [".", ".."] + sorted(os.listdir(path))
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            raw = name.encode("utf-8", "surrogateescape")
            out += b"DENT" + struct.pack("<4I", st.st_mode, st.st_size & 0xFFFFFFFF,
                                         int(st.st_mtime), len(raw)) + raw
        out += b"DONE" + bytes(16)
        self.write(bytes(out))

    def _send(self, spec: str) -> None:
        """SEND as adbd does it (file_sync_service.cpp): a regular file at `path` is removed
        first; a failure is answered with FAIL at once, then DATA is read and dropped up to DONE,
        the file removed and the sync session ended."""
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = spec, 0o644
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fh = open(path, "wb")
            os.chmod(path, stat.S_IMODE(mode))
        except OSError as exc:
            self._send_failed(f"couldn't create file: {exc.strerror}", path)
        peer = self.conn.peer
        with fh:
            while True:
                ident, length = self._request()
                if ident == b"DONE":
                    break
                if ident != b"DATA":
                    raise ProtocolError(f"expected DATA or DONE in SEND, got {ident!r}")
                if length > SYNC_DATA_MAX:
                    raise ProtocolError(f"DATA chunk of {length} bytes is over {SYNC_DATA_MAX}")
                data = self._read(length)
                error = None
                if peer.disk_free_bytes is not None and len(data) > peer.disk_free_bytes:
                    error = "write failed: No space left on device"
                else:
                    try:
                        fh.write(data)
                    except OSError as exc:
                        error = f"write failed: {exc.strerror}"
                if error:
                    fh.close()
                    self._send_failed(error, path)
                if peer.disk_free_bytes is not None:
                    peer.disk_free_bytes -= len(data)
        os.utime(path, (length, length))  # DONE's length is the mtime
        self.write(b"OKAY" + bytes(4))

    def _send_failed(self, error: str, path: str) -> None:
        # SendSyncFail writes the header and the message apart: they may come as two WRTEs
        data = error.encode()
        self.write(b"FAIL" + struct.pack("<I", len(data)))
        self.write(data)
        try:
            while True:  # adbd reads and drops DATA until DONE (or the host closes the stream)
                ident, length = self._request()
                if ident != b"DATA":
                    break
                self._read(length)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.close()
        raise _StreamClosed()

    def _recv(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(SYNC_DATA_MAX)
                    if not chunk:
                        break
                    self.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as exc:
            self._fail(f"open failed: {exc.strerror}")
            return
        self.write(b"DONE" + bytes(4))


# ---- connections --------------------------------------------------------------------------

class _Connection:
    def __init__(self, peer: "AdbPeer", sock: socket.socket):
        self.peer, self.sock = peer, sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.streams_lock = threading.Lock()
        self.next_id = 1
        self.max_out = 4096  # until the host's CNXN says more
        self.dead = False

    def send(self, command: bytes, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self.send_lock:
            if self.dead:
                raise _StreamClosed()
            try:
                self.sock.sendall(pack(command, arg0, arg1, data))
            except OSError:
                self.dead = True
                raise _StreamClosed() from None

    def forget(self, local_id: int) -> None:
        with self.streams_lock:
            self.streams.pop(local_id, None)

    def kill(self) -> None:
        """Drop the connection at once (no CLSE), as a cable pulled out."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def serve(self) -> None:
        try:
            self._handshake()
            while True:
                self._dispatch(read_message(self.sock, MAX_PAYLOAD))
        except ProtocolError as exc:
            self.peer.errors.append(f"protocol: {exc}")
        except (ConnectionError, OSError, _StreamClosed):
            pass  # the host went away, or go_offline() / on_shell dropped the connection
        except Exception as exc:  # noqa: BLE001 - a bug in the peer: the test sees it
            self.peer.errors.append(f"peer: {type(exc).__name__}: {exc}")
        finally:
            self.dead = True
            with self.streams_lock:
                streams = list(self.streams.values())
                self.streams.clear()
            for stream in streams:
                stream.closed = True
                stream.on_closed()
            self.sock.close()
            self.peer._forget(self)

    def _handshake(self) -> None:
        peer = self.peer
        msg = read_message(self.sock, MAX_PAYLOAD)
        while msg.command != b"CNXN":  # protocol.txt: anything before CONNECT is ignored
            msg = read_message(self.sock, MAX_PAYLOAD)
        if msg.arg0 < A_VERSION:
            raise ProtocolError(f"host protocol version {msg.arg0:#x} is too old")
        self.max_out = min(msg.arg1, MAX_PAYLOAD)
        peer.host_banners.append(msg.data.rstrip(b"\0").decode("utf-8", "replace"))
        token = os.urandom(TOKEN_SIZE)
        self.send(b"AUTH", AUTH_TOKEN, 0, token)
        while True:
            msg = read_message(self.sock, MAX_PAYLOAD)
            if msg.command == b"CNXN":  # the host started over
                token = os.urandom(TOKEN_SIZE)
                self.send(b"AUTH", AUTH_TOKEN, 0, token)
            elif msg.command != b"AUTH":
                continue
            elif msg.arg0 == AUTH_SIGNATURE:
                if any(signature_ok(key, token, msg.data) for key in peer.authorized_keys()):
                    peer.auth_log.append("signature accepted")
                    self._connected()
                    return
                peer.auth_log.append("signature rejected")
                token = os.urandom(TOKEN_SIZE)  # protocol.txt: a new token for the next key
                self.send(b"AUTH", AUTH_TOKEN, 0, token)
            elif msg.arg0 == AUTH_RSAPUBLICKEY:
                try:
                    parse_android_pubkey(msg.data)
                except ValueError as exc:
                    peer.auth_log.append(f"bad public key: {exc}")
                    continue
                if peer.allow_new_keys:
                    peer.authorize(msg.data.rstrip(b"\0"))
                    peer.auth_log.append("public key allowed")
                    self._connected()
                    return
                # Nobody taps "Allow": the host waits, as in front of a phone left alone.
                peer.auth_log.append("public key not allowed")

    def _connected(self) -> None:
        self.send(b"CNXN", A_VERSION, MAX_PAYLOAD, self.peer.banner.encode() + b"\0")

    def _dispatch(self, msg: Message) -> None:
        if msg.command == b"OPEN":
            self._open(msg.arg0, msg.data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
            return
        with self.streams_lock:
            stream = self.streams.get(msg.arg1)
        if stream is None or stream.remote_id != msg.arg0:
            return  # protocol.txt: messages for streams we do not know are ignored
        if msg.command == b"OKAY":
            stream.ready.set()
        elif msg.command == b"WRTE":
            stream.on_data(msg.data)
            self.send(b"OKAY", stream.local_id, stream.remote_id)
        elif msg.command == b"CLSE":
            stream.close()  # adbd answers a CLSE with its own; adb-shell waits for it

    def _open(self, remote_id: int, destination: str) -> None:
        if remote_id == 0:
            raise ProtocolError("OPEN with local-id 0")
        with self.streams_lock:
            local_id = self.next_id
            self.next_id += 1
        stream: _Stream | None = None
        if destination.startswith("shell:") and destination[len("shell:"):]:
            command = destination[len("shell:"):]
            self.peer.commands.append(command)
            if self.peer.on_shell is not None and self.peer.on_shell(command) == "drop":
                self.kill()
                return
            try:
                stream = _ShellStream(self, local_id, remote_id, command)
            except OSError as exc:  # e.g. shell_cwd is gone: the OPEN fails, as adbd's would
                self.peer.errors.append(f"shell: {exc}")
        elif destination == "sync:":
            stream = _SyncStream(self, local_id, remote_id)
        if stream is None:
            self.peer.refused.append(destination)
            self.send(b"CLSE", 0, remote_id)  # a failed OPEN
            return
        with self.streams_lock:
            self.streams[local_id] = stream
        self.send(b"OKAY", local_id, remote_id)
        stream.start()


@dataclass
class AdbPeer:
    """A device that speaks ADB on 127.0.0.1. Use as a context manager or start()/stop()."""

    shell_cwd: Path
    keys: list[bytes] = field(default_factory=list)  # authorized adbkey.pub contents
    allow_new_keys: bool = False
    port: int = 0
    shell_env: dict | None = None  # environment of shell commands (default: this process's)
    #: on_shell(command) -> "drop" closes the connection instead of running it (a phone lost mid-batch)
    on_shell: Callable[[str], str | None] | None = None
    #: on_output(command, chunk) -> "drop" closes the connection after that output was sent
    on_output: Callable[[str, bytes], str | None] | None = None
    #: bytes a push may still write before the phone's disk is full (None: no limit)
    disk_free_bytes: int | None = None

    def __post_init__(self) -> None:
        self.commands: list[str] = []
        self.sync_requests: list[tuple[str, str]] = []
        self.refused: list[str] = []
        self.auth_log: list[str] = []
        self.host_banners: list[str] = []
        self.errors: list[str] = []
        self.connections_seen = 0
        self._conns: set[_Connection] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._parsed: dict[bytes, rsa.RSAPublicKey] = {}
        initial, self.keys = list(self.keys), []
        for key in initial:
            self.authorize(key)

    @property
    def banner(self) -> str:
        return ("device::ro.product.name=latbench_peer;ro.product.model=Peer;"
                "ro.product.device=peer;features=")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def authorize(self, pubkey: bytes | str | Path) -> None:
        """Trust a key, as /data/misc/adb/adb_keys does (the file's text or its path)."""
        if isinstance(pubkey, Path):
            pubkey = pubkey.read_bytes()
        if isinstance(pubkey, str):
            pubkey = pubkey.encode()
        pubkey = pubkey.strip()
        key = parse_android_pubkey(pubkey)
        with self._lock:
            self._parsed[pubkey] = key
            if pubkey not in self.keys:
                self.keys.append(pubkey)

    def authorized_keys(self) -> list[rsa.RSAPublicKey]:
        with self._lock:
            return list(self._parsed.values())

    def start(self) -> "AdbPeer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        thread = threading.Thread(target=self._accept, args=(sock,), daemon=True, name="adb-peer-accept")
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self._conns.add(conn)
                self.connections_seen += 1
            threading.Thread(target=conn.serve, daemon=True, name="adb-peer-conn").start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def go_offline(self) -> None:
        """Stop listening and drop every connection at once (safe to call from a peer thread)."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.kill()

    def come_back(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self.start()

    def stop(self) -> None:
        self.go_offline()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "AdbPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def write_keypair(path: Path) -> bytes:
    """An adb key pair at `path` and `path`.pub (adb-shell's keygen); returns the .pub text."""
    from adb_shell.auth.keygen import keygen

    path.parent.mkdir(parents=True, exist_ok=True)
    keygen(str(path))
    return Path(f"{path}.pub").read_bytes()
