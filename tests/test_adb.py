"""The adb transport against an ADB protocol peer on 127.0.0.1 (see tests/adb_peer.py), whose
shell runs on this host. Debian's real `adb` client connects, runs a shell command and pushes
a file to the peer first, which shows the peer speaks the real protocol; then adb-shell through
latbench: keys, exit codes, quoting, timeouts, pushes that skip what the phone has, device
info, and full collections, one with the phone dropping off mid-collection."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("adb_shell", reason="the adb transport needs adb-shell, a latbench dependency: pip install -e .")

from adb_peer import AdbPeer, parse_android_pubkey, write_keypair  # noqa: E402
from conftest import (collect_in_a_process, hung_run_timing, listed_runs, python_that_hangs_once, running,  # noqa: E402
                      signal_when, wait_for)

from latbench.errors import DeviceError, ProfileError  # noqa: E402
from latbench.profiles import CONNECTION_FIELDS, parse_profile  # noqa: E402
from latbench.transports import CommandResult, open_transport  # noqa: E402
from latbench.transports.adb import parse_device_info, split_output  # noqa: E402

# A path with a space, both quotes and a `;`: it must reach the phone literally.
ODD = "odd dir 'q\" ;x"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def adb_key(tmp_path: Path) -> Path:
    """A user's adb key pair (adbkey + adbkey.pub), as `adb` itself keeps them."""
    key = tmp_path / "keys" / "adbkey"
    write_keypair(key)
    return key


@pytest.fixture
def peer(tmp_path: Path, adb_key: Path):
    """A phone that already trusts `adb_key`; its shell runs in tmp_path on this host."""
    p = AdbPeer(shell_cwd=tmp_path, keys=[Path(f"{adb_key}.pub").read_bytes()]).start()
    yield p
    p.stop()
    assert p.errors == [], f"the peer saw protocol errors: {p.errors}"


def make_profile(tmp: Path, address: str, key: Path, *, name: str = "adb-test",
                 workdir: Path | None = None, ops_per_batch: int = 2, retry: dict | None = None,
                 python: str = sys.executable, **connection):
    """Write a profile file the way a user would and load it through validation."""
    conn = {"address": address, "adb_key": str(key), "connect_timeout_s": 5, "auth_timeout_s": 2,
            "workdir": str(workdir or tmp / ODD / "work")}
    conn.update(connection)
    data = {"name": name, "transport": "adb", "runner": "python", "runtime": "onnxruntime",
            "format": "onnx", "threads": 1, "python": python, "connection": conn,
            "protocol": {"warmup_runs": 1, "warmup_s": 0.0, "runs": 3, "min_time_s": 0.0,
                         "max_runs": 3, "rounds": 1, "batch_size": ops_per_batch},
            "timeout_s": 120}
    if retry is not None:
        data["retry"] = retry
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_profile(path)


# ---- Debian's adb client against the peer -----------------------------------------------------

@pytest.fixture
def adb_client(tmp_path: Path):
    """Debian's `adb` with its own server (own port, own HOME and key), killed at the end."""
    exe = shutil.which("adb")
    if exe is None:
        pytest.skip("needs Debian's adb client: apt install adb")
    home = tmp_path / "adb-home"
    pub = write_keypair(home / ".android" / "adbkey")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADB_", "ANDROID_"))}
    env.update(HOME=str(home), ANDROID_ADB_SERVER_PORT=str(port))

    def adb(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([exe, "-P", str(port), *args], env=env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)

    adb.pub, adb.argv, adb.env = pub, [exe, "-P", str(port)], env
    yield adb
    adb("kill-server")


def test_real_adb_client_connects_runs_a_shell_and_pushes(tmp_path, adb_client):
    with AdbPeer(shell_cwd=tmp_path, keys=[adb_client.pub]) as peer:
        out = adb_client("connect", peer.address)
        assert out.returncode == 0 and f"connected to {peer.address}" in out.stdout, out
        devices = adb_client("devices", "-l").stdout
        assert re.search(rf"^{re.escape(peer.address)}\s+device\b.*model:Peer", devices, re.M), devices

        shell = adb_client("-s", peer.address, "shell", "echo", "hi")
        assert (shell.returncode, shell.stdout) == (0, "hi\n"), shell

        src = tmp_path / "payload.bin"
        src.write_bytes(os.urandom(300_000))  # several sync DATA chunks
        dst = tmp_path / "pushed" / "payload.bin"
        push = adb_client("-s", peer.address, "push", str(src), str(dst))
        assert push.returncode == 0 and "1 file pushed" in push.stdout, push
        assert dst.read_bytes() == src.read_bytes()
        back = tmp_path / "pulled.bin"
        pull = adb_client("-s", peer.address, "pull", str(dst), str(back))
        assert pull.returncode == 0 and back.read_bytes() == src.read_bytes(), pull
        (dst.parent / "second.txt").write_text("two\n")
        pull = adb_client("-s", peer.address, "pull", str(dst.parent), str(tmp_path / "copy"))
        assert pull.returncode == 0, pull  # a directory: LIST, then RECV of each entry
        assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["payload.bin", "second.txt"]
        assert (tmp_path / "copy" / "second.txt").read_text() == "two\n"

        # Two shells at once share the one connection as two streams: each sees the other's mark
        procs = [subprocess.Popen([*adb_client.argv, "-s", peer.address, "shell",
                                   meet(tmp_path, i)], env=adb_client.env, stdout=subprocess.PIPE,
                                  text=True, stdin=subprocess.DEVNULL) for i in (1, 2)]
        outs = [p.communicate(timeout=30)[0] for p in procs]
        assert outs == ["1 met 2\n", "2 met 1\n"]  # not one after the other

        # The real client authenticated by signature and said who it is.
        assert peer.auth_log == ["signature accepted"]
        assert peer.host_banners and peer.host_banners[0].startswith("host::features=")
        assert ("SEND", f"{dst},{src.stat().st_mode}") in peer.sync_requests
        assert ("RECV", str(dst)) in peer.sync_requests
        assert [p for kind, p in peer.sync_requests if kind == "LIST"] == [f"{dst.parent}/"]
        assert peer.commands[0] == "echo hi" and peer.errors == []


def test_real_adb_client_with_an_unknown_key_stays_unauthorized(tmp_path, adb_client):
    other = write_keypair(tmp_path / "other" / "adbkey")
    with AdbPeer(shell_cwd=tmp_path, keys=[other]) as peer:
        adb_client("connect", peer.address)
        deadline = time.monotonic() + 10
        while "unauthorized" not in (listing := adb_client("devices").stdout):
            assert time.monotonic() < deadline, listing
            time.sleep(0.1)
        shell = adb_client("-s", peer.address, "shell", "touch", str(tmp_path / "ran"))
        assert shell.returncode != 0 and "unauthorized" in shell.stderr
        assert not (tmp_path / "ran").exists() and peer.commands == []
        # It signed the token with its key (refused by the RSA check), then offered that key.
        assert peer.auth_log[:2] == ["signature rejected", "public key not allowed"]


# ---- keys and connecting -------------------------------------------------------------------------

def test_unknown_key_is_refused_with_the_fix(tmp_path, adb_key):
    other = write_keypair(tmp_path / "other" / "adbkey")
    with AdbPeer(shell_cwd=tmp_path, keys=[other]) as peer:
        profile = make_profile(tmp_path, peer.address, adb_key, auth_timeout_s=1)
        t = open_transport(profile)
        prompts: list[str] = []
        t.on_auth_prompt = prompts.append
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.connect()
        assert time.monotonic() - start < 8
        assert err.value.stage == "auth"
        assert "did not accept" in err.value.message and "accept the RSA key prompt" in err.value.hint
        assert len(prompts) == 1 and str(adb_key) in prompts[0]
        assert peer.commands == []

        peer.allow_new_keys = True  # the user taps "Allow"
        t.connect()
        assert t.run(["echo", "in"], 10).stdout == "in\n"
        t.close()
        assert parse_android_pubkey(Path(f"{adb_key}.pub").read_bytes()).public_numbers() in \
            [k.public_numbers() for k in peer.authorized_keys()]


def test_missing_key_is_created_private_and_offered(tmp_path):
    key = tmp_path / "home" / ".android" / "adbkey"
    with AdbPeer(shell_cwd=tmp_path, allow_new_keys=True) as peer:
        with open_transport(make_profile(tmp_path, peer.address, key)) as t:
            assert t.run(["true"], 10).exit_code == 0
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert peer.auth_log == ["signature rejected", "public key allowed"]  # signed, then offered
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        private = load_pem_private_key(key.read_bytes(), None)
        public = parse_android_pubkey(Path(f"{key}.pub").read_bytes())
        assert public.public_numbers() == private.public_key().public_numbers()


def test_a_broken_key_file_names_the_fix(tmp_path, peer):
    key = tmp_path / "bad" / "adbkey"
    key.parent.mkdir()
    key.write_text("not a key\n")
    Path(f"{key}.pub").write_text("AAAA user@host\n")
    with pytest.raises(DeviceError) as err:
        open_transport(make_profile(tmp_path, peer.address, key)).connect()
    assert "is not a usable adb RSA private key" in err.value.message
    assert "connection.adb_key" in err.value.hint


def test_connection_failures_are_one_line_with_the_fix(tmp_path, adb_key):
    port = free_port()  # nothing listens there
    t = open_transport(make_profile(tmp_path, f"127.0.0.1:{port}", adb_key))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "nothing accepts adb connections" in err.value.message and "adb tcpip 5555" in err.value.hint

    # Listening but never answering: a phone asleep or not in adb mode.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t = open_transport(make_profile(tmp_path, address, adb_key, connect_timeout_s=1))
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.connect()
        assert time.monotonic() - start < 6
        assert "is offline" in err.value.message and "adb tcpip 5555" in err.value.hint

    # Something else on the port.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)

        def answer() -> None:
            conn, _ = other.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            time.sleep(2)
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(DeviceError) as err:
            open_transport(make_profile(tmp_path, address, adb_key, connect_timeout_s=1)).connect()
        assert "does not speak the adb protocol (it answered 'SSH-'..., not an adb message)" in err.value.message


def test_profile_mistakes_name_the_setting(tmp_path, adb_key):
    path = tmp_path / "p.yaml"
    for conn, match in (({"adb_key": str(adb_key)}, "needs connection.address or connection.usb"),
                        ({"address": "phone:port"}, "not host:port"),
                        ({"address": "10.0.0.2:5555", "cpu_mask": "big"}, "not a hex mask"),
                        ({"address": "10.0.0.2:5555", "workdir": "tmp/lb"}, "not an absolute path"),
                        ({"serial": "8A2X0B1"}, "usb: true")):
        path.write_text(yaml.safe_dump({"name": "p", "transport": "adb", "connection": conn}))
        with pytest.raises(ProfileError, match=match):
            open_transport(parse_profile(path))
    path.write_text(yaml.safe_dump({"name": "p", "transport": "adb", "connection": {"address": "10.0.0.2"}}))
    t = open_transport(parse_profile(path))
    assert (t.host, t.port, t.workdir) == ("10.0.0.2", 5555, "/data/local/tmp/latbench")


@pytest.mark.parametrize("error, message, hint", [
    ("USBErrorBusy", "held by another program", "adb kill-server"),
    ("USBErrorAccess", "no permission to open", "udev rule")])
def test_the_two_usual_usb_failures_say_what_to_do(tmp_path, adb_key, error, message, hint):
    """libusb1's errors from adb-shell's USB connect (an adb server holding the phone; no udev
    rule) got "try `adb devices`", which starts the adb server that then holds the phone."""
    path = tmp_path / "usbphone.yaml"
    conn = {"usb": True, "serial": "8A2X0B1", "adb_key": str(adb_key)}
    path.write_text(yaml.safe_dump({"name": "usbphone", "transport": "adb", "connection": conn}))
    usb_error = type(error, (Exception,), {})  # usb1 is not installed here: its class by name

    class Phone:
        def connect(self, **_):
            raise usb_error("LIBUSB_ERROR [-6]")

        def close(self):
            pass

    t = open_transport(parse_profile(path))
    t._make_device = Phone
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert message in err.value.message and hint in err.value.hint
    assert "adb devices` to see why" not in err.value.hint


def test_usb_without_libusb1_names_the_extra(tmp_path, adb_key):
    if importlib_find("usb1"):
        pytest.skip("libusb1 is installed here")
    path = tmp_path / "usbphone.yaml"
    conn = {"usb": True, "serial": "8A2X0B1", "adb_key": str(adb_key)}
    path.write_text(yaml.safe_dump({"name": "usbphone", "transport": "adb", "connection": conn}))
    with pytest.raises(DeviceError) as err:
        open_transport(parse_profile(path)).connect()
    assert "libusb1" in err.value.message and ".[usb]" in err.value.hint


def importlib_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---- commands ------------------------------------------------------------------------------------

def test_exit_status_stdout_and_stderr_are_kept_apart(tmp_path, peer, adb_key):
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        res = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
        assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
        res = t.run(["printf", "no newline"], 10)
        assert (res.exit_code, res.stdout, res.stderr) == (0, "no newline", "")
        assert t.run(["false"], 10).exit_code == 1
        with pytest.raises(DeviceError, match="not found on adb-test"):
            t.run(["no-such-program-here"], 10)
        assert (tmp_path / ODD / "work").is_dir()  # created at connect, literally named
        assert not list((tmp_path / ODD / "work").glob(".stderr-*"))  # stderr files are removed


@pytest.mark.parametrize("stderr, missed", [
    ("sh: 1: /data/local/tmp/bm: not found", True),  # dash
    ("bash: line 1: /data/local/tmp/bm: command not found", True),
    ("zsh:1: command not found: /data/local/tmp/bm", True),
    ("/system/bin/sh: /data/local/tmp/bm: inaccessible or not found", True),  # Android's mksh
    ("timeout: exec /data/local/tmp/bm: No such file or directory", True),  # toybox timeout
    ("zsh:1: no such file or directory: /data/local/tmp/bm", True),
    ("timeout: failed to run command '/data/local/tmp/bm': No such file or directory", True),  # GNU
    ("timeout: failed to run command \u2018/data/local/tmp/bm\u2019: No such file or directory", True),
    ("ERROR: /data/local/tmp/models/m.tflite: No such file or directory", False),  # the tool's own
    ("/data/local/tmp/bm: error while loading shared libraries: libc++.so: cannot open shared object "
     "file: No such file or directory", False),  # it ran: a library is missing, not the tool
    ("bash: s.sh: No such file or directory", False),
])
def test_exit_127_is_program_not_found_only_when_the_shell_says_so(stderr, missed):
    from latbench.transports.remote_runs import shell_missed

    assert shell_missed("/data/local/tmp/bm", stderr) is missed


def test_every_word_reaches_the_phone_literally(tmp_path, peer, adb_key):
    words = ["a b", "it's", 'q"x', ";", "touch", "pwned1", "$(touch pwned2)", "`touch pwned3`",
             "&& touch pwned4", "*", "\\n"]
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        res = t.run(["printf", "%s\\n", *words], 10)
    assert res.exit_code == 0 and res.stdout.splitlines() == words
    assert not [p for p in tmp_path.rglob("pwned*")], "a quoted word ran as a command"


def test_a_silent_command_longer_than_the_connect_timeout_is_waited_for(tmp_path, peer, adb_key):
    """adb-shell's transport timeout would end a command that prints nothing for longer
    (JeffLIrion/adb_shell#209); a run waits as long as its own timeout."""
    with open_transport(make_profile(tmp_path, peer.address, adb_key, connect_timeout_s=1)) as t:
        res = t.run(["sh", "-c", "sleep 2.5; echo done"], 30)
    assert (res.exit_code, res.stdout) == (0, "done\n")


def test_ctrl_c_ends_a_tool_under_timeout_on_the_phone(tmp_path, peer, adb_key):
    """GNU timeout (in every batch script) gives the tool a process group of its own, which
    hanging up the shell does not reach: Ctrl-C must end the run's whole session."""
    marker = f"8{time.time() % 1000:.4f}"
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        with signal_when(lambda: running(f"^sleep {marker}"), settle_s=0.3), \
                pytest.raises(KeyboardInterrupt) as stopped:
            t.run(["sh", "-c", f"echo done; printf cut; timeout 60 sleep {marker}"], 30)
        assert stopped.value.partial_stdout == "done\n"  # the runner keeps what had finished
        deadline = time.monotonic() + 5
        while running(f"sleep {marker}"):
            assert time.monotonic() < deadline, "the tool still runs on the phone"
            time.sleep(0.1)
        assert t.run(["echo", "still usable"], 10).stdout == "still usable\n"


def test_a_run_of_a_dropped_connection_is_ended_on_reconnect(tmp_path, peer, adb_key):
    marker = f"9{time.time() % 1000:.4f}"
    peer.on_output = lambda command, chunk: "drop" if b"started" in chunk else None
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        with pytest.raises(DeviceError, match="lost the adb connection"):
            t.run(["sh", "-c", f"echo started; exec timeout 60 sleep {marker}"], 30)
        peer.on_output = None
        assert running(f"sleep {marker}")
        assert t.run(["echo", "again"], 10).stdout == "again\n"  # reconnects, and first ends that run
        deadline = time.monotonic() + 5
        while running(f"sleep {marker}"):
            assert time.monotonic() < deadline, "the run of the dropped connection still times"
            time.sleep(0.1)


def test_timeout_kills_the_command_on_the_phone(tmp_path, peer, adb_key):
    pidfile = tmp_path / "pid"
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", 'echo $$ > "$1"; echo done one; printf cut; exec sleep 60', "sh", str(pidfile)], 1)
        assert time.monotonic() - start < 10
        assert "took longer than 1 s" in err.value.message and "timeout_s" in err.value.hint
        assert err.value.partial_stdout == "done one\n"  # what finished is handed on, in whole lines
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "the timed-out command still runs on the phone"
            time.sleep(0.1)
        assert t.run(["echo", "still usable"], 10).stdout == "still usable\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(")")[-1].split()[0] != "Z"


def test_a_dropped_connection_fails_fast_and_the_next_call_reconnects(tmp_path, peer, adb_key):
    """adb-shell would spin on the closed socket until its read timeout (here 75 s)."""
    peer.on_shell = lambda command: "drop" if "sleep 30" in command else None
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", "sleep 30"], 60)
        assert time.monotonic() - start < 5
        assert "lost the adb connection" in err.value.message and "re-run" in err.value.hint
        assert t.run(["echo", "back"], 10).stdout == "back\n"
    assert peer.connections_seen == 2


def test_a_silent_link_is_noticed_by_tcp_keepalive(tmp_path, peer, adb_key):
    """A phone that leaves the Wi-Fi sends no FIN or RST, and a benchmark prints nothing for
    minutes: without TCP keepalive a run waited its whole timeout (30 min in the templates)
    before the retry. The socket probes the link, and a probe that times out (ETIMEDOUT from
    recv) is a lost connection, not a timeout to raise."""
    from latbench.transports import adb as adb_mod

    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        t.run(["true"], 10)
        sock = t._device._io_manager._transport._connection
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == adb_mod._KEEPALIVE_IDLE_S
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == adb_mod._KEEPALIVE_COUNT
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == adb_mod._SILENT_LINK_S * 1000
        assert adb_mod._SILENT_LINK_S <= 60

    a, b = socket.socketpair()
    try:
        b.sendall(b"x")  # readable, so adb-shell's select lets recv run

        class DeadLink:
            def fileno(self) -> int:
                return a.fileno()

            def recv(self, n: int) -> bytes:
                raise TimeoutError(110, "Connection timed out")

        transport = adb_mod._tcp_transport_class()("10.0.0.9", 5555)
        transport._connection = DeadLink()
        with pytest.raises(ConnectionAbortedError, match="10.0.0.9:5555 stopped answering"):
            transport.bulk_read(4, 5)
        transport._connection = None
    finally:
        a.close()
        b.close()


def meet(folder: Path, i: int, wait_s: float = 15) -> str:
    """A shell command for run `i` of runs 1 and 2: it leaves its mark in `folder` and waits up
    to `wait_s` for the other's; it prints "I met J" only when both ran at once (run one after
    the other, the first gives up and prints "I alone"). No time limit for a slow host to miss."""
    mine, other = (shlex.quote(str(folder / f"meet-{n}")) for n in (i, 3 - i))
    return (f"touch {mine}; n=0; while [ ! -e {other} ] && [ $n -lt {int(wait_s * 20)} ]; do "
            f"sleep 0.05; n=$((n + 1)); done; if [ -e {other} ]; then echo '{i} met {3 - i}'; "
            f"else echo '{i} alone'; fi")


def test_two_connections_at_once(tmp_path, peer, adb_key):
    profile = make_profile(tmp_path, peer.address, adb_key)
    outs: dict[int, str] = {}

    def one(i: int) -> None:
        with open_transport(profile) as t:
            outs[i] = t.run(["sh", "-c", meet(tmp_path, i)], 30).stdout

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert outs == {1: "1 met 2\n", 2: "2 met 1\n"}  # not one after the other
    assert peer.connections_seen == 2


# ---- files ---------------------------------------------------------------------------------------

def _sends(peer: AdbPeer) -> list[str]:
    return [path for kind, path in peer.sync_requests if kind == "SEND"]


def test_push_skips_what_the_phone_has_and_replaces_what_changed(tmp_path, peer, adb_key):
    files = []
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        f = tmp_path / "local" / name
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(os.urandom(100_000))
        files.append(f)
    profile = make_profile(tmp_path, peer.address, adb_key)
    with open_transport(profile) as t:
        progress: list[tuple[str, int, int]] = []
        t.progress = lambda remote, done, total: progress.append((remote, done, total))
        remotes = t.stage_many(files)
        assert t.uploads == 3 and len(_sends(peer)) == 3
        assert all(Path(r).read_bytes() == f.read_bytes() for f, r in zip(files, remotes))
        assert remotes[0] == f"{profile.connection['workdir']}/models/a.onnx"
        for remote in remotes:
            seen = [done for r, done, total in progress if r == remote]
            assert seen == sorted(seen) and seen[-1] == 100_000
        assert t.stage_many(files) == remotes and t.uploads == 3  # same connection: nothing sent

    Path(remotes[1]).write_bytes(b"changed on the phone")
    commands_before = len(peer.commands)
    with open_transport(profile) as t:  # a new connection learns what is there in one command
        t.stage_many(files)
        assert t.uploads == 1
    assert _sends(peer)[3:] == [f"{remotes[1]},{stat.S_IFREG | stat.S_IMODE(files[1].stat().st_mode)}"]
    assert Path(remotes[1]).read_bytes() == files[1].read_bytes()
    hash_commands = [c for c in peer.commands[commands_before:] if "@@dir" in c]
    assert len(hash_commands) == 1


def test_a_push_the_phone_refuses_fails_at_once_with_its_reason(tmp_path, peer, adb_key):
    """adbd answers a failed write with FAIL at once and drops the rest of the file; adb-shell
    threw that FAIL away and waited out the 30 s transfer timeout, so a full disk read "no
    answer from the phone" and collection never saw that the disk was full."""
    from latbench.collect import _disk_full

    big, small = tmp_path / "big.onnx", tmp_path / "small.onnx"
    big.write_bytes(os.urandom(3_000_000))  # many sync chunks
    small.write_bytes(os.urandom(1000))
    peer.disk_free_bytes = 1_000_000
    profile = make_profile(tmp_path, peer.address, adb_key)
    with open_transport(profile) as t:
        remote = f"{profile.connection['workdir']}/models/big.onnx"
        started = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.push_many([(big, remote)])
        assert time.monotonic() - started < 10  # not the 30 s io timeout
        assert "No space left on device" in err.value.message and _disk_full(str(err.value))
        wait_for(lambda: not Path(remote).exists(), 10, "the phone to remove what it had written")
        peer.disk_free_bytes = None
        connections = peer.connections_seen
        assert t.run(["echo", "still here"], 10).stdout == "still here\n"  # the connection lives on
        assert t.push_many([(small, f"{profile.connection['workdir']}/models/small.onnx")]) == 1
        assert t.push_many([(big, remote)]) == 1 and Path(remote).read_bytes() == big.read_bytes()
        assert peer.connections_seen == connections


def test_hashing_many_pushed_models_may_take_as_long_as_a_batch(tmp_path, adb_key, monkeypatch):
    """What the phone has is hashed once per connection, every model ever pushed: gigabytes of
    networks take longer than the 30 s transfer timeout on a phone, and the first batch after
    each connect failed "while hashing pushed files", whatever timeout_s said."""
    from latbench.transports import adb as adb_mod

    monkeypatch.setattr(adb_mod, "_MIN_IO_TIMEOUT_S", 1.0)
    monkeypatch.setattr(adb_mod, "_GRACE_S", 0.5)
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real = shutil.which("sha256sum")
    # 4 s: past what the old limit allowed (connect_timeout_s + grace = 2.5 s), and the 2 s
    # connect timeout leaves a loaded host time for the setup shell itself
    (slow / "sha256sum").write_text(f'#!/bin/sh\nsleep 4\nexec {real} "$@"\n')
    (slow / "sha256sum").chmod(0o755)
    env = dict(os.environ, PATH=f"{slow}:{os.environ['PATH']}")
    model = tmp_path / "local" / "m.onnx"
    model.parent.mkdir()
    model.write_bytes(os.urandom(1000))
    with AdbPeer(shell_cwd=tmp_path, keys=[Path(f"{adb_key}.pub").read_bytes()], shell_env=env) as peer:
        with open_transport(make_profile(tmp_path, peer.address, adb_key, connect_timeout_s=2)) as t:
            assert t.hasher == "sha256sum"
            t.stage_many([model])  # hashes (4 s) the directory, then pushes
            assert t.uploads == 1
        with open_transport(make_profile(tmp_path, peer.address, adb_key, connect_timeout_s=2)) as t:
            t.stage_many([model])
            assert t.uploads == 0  # the phone has it
        assert peer.errors == []


def test_a_run_past_its_limit_on_a_phone_without_timeout_is_ended_as_too_long(tmp_path, adb_key, monkeypatch):
    """Older phones' shells have no `timeout`, so only the host's limit ends a hung benchmark.
    That limit read as "no answer" (a lost connection), so the hung model was never set aside
    and every retry and re-run hung on it again, the run left going on the phone."""
    from latbench.transports import adb as adb_mod

    monkeypatch.setattr(adb_mod, "_GRACE_S", 0.5)
    monkeypatch.setattr(adb_mod, "_KILL_AFTER_S", 1)
    bin_dir = tmp_path / "no-timeout-bin"  # the phone's tools, less `timeout`
    bin_dir.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if tool.name != "timeout" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    env = dict(os.environ, PATH=str(bin_dir))
    hang = "sleep 307"  # a pattern no other test's process has
    with AdbPeer(shell_cwd=tmp_path, keys=[Path(f"{adb_key}.pub").read_bytes()], shell_env=env) as peer:
        with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
            assert "timeout" not in t._tools
            started = time.monotonic()
            with pytest.raises(DeviceError) as err:
                t.run(["sh", "-c", f"echo started; {hang}"], 1)
            assert time.monotonic() - started < 15
            assert err.value.timed_out and "took longer than" in err.value.message, err.value.message
            assert err.value.partial_stdout == "started\n"
            wait_for(lambda: not running(hang), 10, "the hung run to be ended on the phone")
            connections = peer.connections_seen
            assert t.run(["echo", "still here"], 10).stdout == "still here\n"
            assert peer.connections_seen == connections  # the connection was fine all along
        assert peer.errors == []


def test_pull_and_a_missing_file(tmp_path, peer, adb_key):
    remote = tmp_path / "on-phone.json"
    remote.write_text('{"ok": true}\n')
    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        t.pull(str(remote), tmp_path / "here.json")
        assert (tmp_path / "here.json").read_text() == '{"ok": true}\n'
        with pytest.raises(DeviceError) as err:
            t.pull(str(tmp_path / "nope.json"), tmp_path / "nope.json")
        assert "pulling" in err.value.message and "failed" in err.value.message
        assert not (tmp_path / "nope.json").exists() and not list(tmp_path.glob(".nope.json*"))
        assert t.run(["true"], 10).exit_code == 0  # a failed pull does not break the connection


# ---- device info ---------------------------------------------------------------------------------

def test_device_info_of_the_peer_is_this_host(tmp_path, peer, adb_key):
    t = open_transport(make_profile(tmp_path, peer.address, adb_key))
    info = t.device_info()
    t.close()
    assert info["reachable"] and info["auth"] and info["hasher"] == "sha256sum"
    assert info["cores"] == len(glob.glob("/sys/devices/system/cpu/cpu[0-9]*"))
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    assert abs(info["free_mb"] - free_mb) <= max(512, free_mb // 50)
    zones = [z for z in glob.glob("/sys/class/thermal/thermal_zone*") if os.access(f"{z}/temp", os.R_OK)]
    assert len(info["temperatures_c"]) <= len(zones)
    assert info["model"] is None  # no getprop on this host


def test_a_work_directory_that_cannot_be_written_is_refused_at_connect(tmp_path, peer, adb_key):
    """An existing directory on a read-only filesystem passes `mkdir -p`; connect says so in one
    line, and `latbench doctor` shows the phone reached and logged in, with the work directory
    as what fails (it said "reachable: FAIL ... device not reachable")."""
    from latbench.cli.doctor import diagnose

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where no file can be created")
    profile = make_profile(tmp_path, peer.address, adb_key, workdir=Path("/proc"))
    with pytest.raises(DeviceError) as err:
        open_transport(profile).connect()
    assert err.value.message.startswith(f"cannot write to the work directory /proc on {peer.address}: ")
    assert ".latbench-probe-" in err.value.message and "connection.workdir" in err.value.hint
    assert err.value.stage == "setup"
    rows = {r["check"]: r for r in diagnose(profile)}
    assert rows["reachable"]["status"] == "ok" and rows["auth"]["status"] == "ok"
    assert rows["work dir"]["status"] == "FAIL" and "cannot write to" in rows["work dir"]["detail"]
    assert rows["runtime"]["status"] == "skipped"
    info = open_transport(profile).device_info()
    assert (info["reachable"], info["auth"]) == (True, True) and "cannot write" in info["error"]


def test_doctor_leaves_a_phone_alone_while_a_collection_measures_it(tmp_path, peer, adb_key):
    """doctor starts the runtime on the phone (the python runner imports onnxruntime there):
    during a collection that load lands in its timings, and doctor said nothing of it."""
    from latbench.cli.doctor import diagnose
    from latbench.locks import device_lock

    profile = make_profile(tmp_path, peer.address, adb_key)
    with device_lock(profile):  # a collection of this phone is running
        rows = {r["check"]: r for r in diagnose(profile)}
    assert rows["busy"]["status"] == "warn" and "being measured already" in rows["busy"]["detail"]
    assert rows["runtime"]["status"] == rows["reachable"]["status"] == rows["steadiness"]["status"] == "skipped"
    assert peer.commands == [] and peer.connections_seen == 0  # the phone was not touched
    rows = {r["check"]: r for r in diagnose(profile, probe=False)}  # once it is done: the checks run
    assert "busy" not in rows and rows["reachable"]["status"] == "ok"


def _noexec_dir() -> Path | None:
    """A writable directory on a noexec mount of this host (as /sdcard is on a phone), if any."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 3 and "noexec" in fields[3].split(",") and os.access(fields[1], os.W_OK):
            target = Path(fields[1].replace("\\040", " "))
            try:
                probe = Path(tempfile.mkdtemp(prefix="latbench-noexec-", dir=target))
            except OSError:
                continue
            return probe
    return None


def test_a_noexec_work_directory_is_found_at_connect(tmp_path, peer, adb_key):
    """A tool pushed to a work directory on a noexec mount cannot start ("is not executable",
    which hides why); connect finds out, and doctor says it for a tool runner."""
    from latbench.cli.doctor import noexec_row

    with open_transport(make_profile(tmp_path, peer.address, adb_key)) as t:
        assert t.workdir_exec is True and t.device_info()["workdir_exec"] is True
        assert not list(Path(t.workdir).glob(".latbench-probe-*"))
    profile = make_profile(tmp_path, peer.address, adb_key, name="sd")
    _, status, detail, fix = noexec_row(profile, "/sdcard/latbench")
    assert status == "ok" and "noexec" in detail  # the python runner only reads files there
    import dataclasses

    tool = dataclasses.replace(profile, runner="benchmark_model",
                               runtime_options={"binary_local": "/x/benchmark_model"})
    _, status, detail, fix = noexec_row(tool, "/sdcard/latbench")
    assert status == "FAIL" and "binary_local" in detail and "/data/local/tmp" in fix
    where = _noexec_dir()
    if where is None:
        pytest.skip("no writable noexec mount on this host")
    try:
        with open_transport(make_profile(tmp_path, peer.address, adb_key, workdir=where)) as t:
            assert t.workdir_exec is False
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_device_info_when_the_phone_is_unreachable(tmp_path, adb_key):
    t = open_transport(make_profile(tmp_path, f"127.0.0.1:{free_port()}", adb_key))
    info = t.device_info()
    assert (info["reachable"], info["auth"]) == (False, False)
    assert "adb tcpip 5555" in info["hint"]


PIXEL3_INFO = "\n".join([
    "prop\tro.product.model\tPixel 3",
    "prop\tro.build.version.release\t12",
    "prop\tro.product.cpu.abi\tarm64-v8a",
    *[f"cpu\tcpu{i}\t{'' if i == 0 else '1'}\tschedutil\t{1766400 if i < 4 else 2803200}\t300000\t"
      f"{1766400 if i < 4 else 2803200}" for i in range(7)],
    "cpu\tcpu7\t0\t\t\t\t",  # an offline core has no cpufreq
    "temp\tthermal_zone0\taoss0-usr\t34200",
    "temp\tthermal_zone1\tcpu0-silver-usr\t36100",
    "temp\tthermal_zone10\tcpu4-gold-usr\t41700",
    "temp\tthermal_zone11\tcpu4-gold-usr\t40900",
    "temp\tthermal_zone40\tbattery\t29",
    "temp\tthermal_zone41\tpm8998_tz\t-",
    "df\t/dev/block/dm-5         52875924  20193516  32551336  39% /data",
])


def test_parse_device_info_of_a_phone():
    info = parse_device_info(PIXEL3_INFO)
    assert (info["model"], info["android_version"], info["abi"]) == ("Pixel 3", "12", "arm64-v8a")
    assert (info["cores"], info["cores_online"]) == (8, 7)
    assert info["online_cpus"] == [0, 1, 2, 3, 4, 5, 6]  # cpu7 is offline
    assert info["governors"]["cpu4"] == "schedutil" and "cpu7" not in info["governors"]
    assert info["max_frequencies_khz"]["cpu4"] == 2803200 and info["frequencies_khz"]["cpu0"] == 1766400
    assert info["temperatures_c"]["cpu4-gold-usr"] == 41.7
    assert info["temperatures_c"]["cpu4-gold-usr (thermal_zone11)"] == 40.9
    assert info["temperatures_c"]["battery"] == 29.0 and "pm8998_tz" not in info["temperatures_c"]
    assert info["max_temperature_c"] == 41.7
    assert info["free_mb"] == 32551336 // 1024 and info["free_bytes"] == 32551336 * 1024
    assert info["os"] == "Android 12 (arm64-v8a)"


def test_doctor_checks_cpu_mask_and_threads_against_the_phones_online_cores():
    """A phone takes big cores offline (idle, hot): a mask on them pins to fewer cores than
    meant, or fails every op ("taskset: failed to set pid's affinity"). Doctor read only the
    core count of an adb phone, so it said "ok" for cores that were offline."""
    from latbench.cli.doctor import cpu_mask_row

    class Profile:
        cpus = [4, 5, 6, 7]
        connection = {"cpu_mask": "f0"}
        source = "pixel3.yaml"
        name = "pixel3"
        transport = "adb"

    # cpu7 is parked, not missing: the mask is right, the runs would use 3 cores until it is back
    check, status, detail, fix = cpu_mask_row(Profile(), parse_device_info(PIXEL3_INFO))
    assert (check, status) == ("cpu mask", "warn") and "cores 7 are offline now (online: 0-6)" in detail, detail
    assert "wake the device" in fix
    Profile.cpus, Profile.connection = [7], {"cpu_mask": "80"}  # only parked cores: every run fails
    assert cpu_mask_row(Profile(), parse_device_info(PIXEL3_INFO))[1] == "FAIL"
    Profile.cpus, Profile.connection = [8], {"cpu_mask": "100"}  # a core the phone does not have
    check, status, detail, _ = cpu_mask_row(Profile(), parse_device_info(PIXEL3_INFO))
    assert status == "FAIL" and "names cores 8, but the device has cores 0-7" in detail, detail
    Profile.cpus, Profile.connection = [4, 5, 6], {"cpu_mask": "70"}
    assert cpu_mask_row(Profile(), parse_device_info(PIXEL3_INFO))[1] == "ok"


def test_split_output_reads_status_and_stderr():
    mark = "@@latbench-rc-abc="
    assert split_output(f"x\r\ny\r\n\r\n{mark}2\r\noops\r\n", mark, "t") == \
        CommandResult(2, "x\ny\n", "oops\n")
    assert split_output(f"\n{mark}0\n", mark, "t") == CommandResult(0, "", "")
    with pytest.raises(DeviceError, match="without an exit status"):
        split_output("partial output", mark, "running x on phone")


# ---- collections ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adb-models")


def _ops(n: int):
    from latbench.spaces.fbnet import FBNetSpace

    return FBNetSpace("cifar").ops()[4:4 + n]


def test_full_collection_over_adb(tmp_path, peer, adb_key, model_cache):
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    ops = _ops(4)
    profile = make_profile(tmp_path, peer.address, adb_key)
    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache) as col:
            plan = col.plan(ops)
            report = col.run(plan)
            uploads = col.transport.uploads
        assert report.measured == 4 and report.batches_failed == 0, report.to_dict()
        rows = store.rows(plan.context)
        assert sorted(r.key for r in rows) == sorted(op.key for op in ops)
        assert all(r.median_ms > 0 and r.count == 3 for r in rows)
        assert plan.runtime_label.startswith("onnxruntime ")
        # runner + 4 models + 2 batch files went through adb sync into the literally named workdir
        models = Path(profile.connection["workdir"]) / "models"
        assert len(list(models.glob("*.onnx"))) == 4
        assert uploads == 1 + 4 + 2 and len(_sends(peer)) == 7
        assert sum(1 for c in peer.commands if re.search(r"pyrunner\.py'? run ", c)) == 2
        # Re-running measures nothing and pushes nothing.
        with Collector(profile, store, cache_dir=model_cache) as col:
            again = col.plan(ops)
            assert again.todo == [] and again.already == 4
            assert col.run(again).measured == 0
            assert col.transport.uploads == 0
        assert len(_sends(peer)) == 7


def _count(store, ctx) -> tuple[int, int]:
    rows = store.rows(ctx)
    return len(rows), len({(r.key, r.round) for r in rows})


def _runs(command: str) -> bool:
    return re.search(r"pyrunner\.py'? run ", command) is not None


def test_phone_gone_mid_collection_loses_nothing(tmp_path, peer, adb_key, model_cache):
    """The phone drops off as the second batch starts and stays away: the rest is recorded as
    failed; once it is back, the re-run measures exactly what is missing."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    ops = _ops(6)
    profile = make_profile(tmp_path, peer.address, adb_key, retry={"attempts": 2, "backoff_s": 0.05})
    batches_started = []

    def gone_at_second_batch(command: str) -> str | None:
        if _runs(command):
            batches_started.append(command)
            if len(batches_started) == 2:
                peer.go_offline()
                return "drop"
        return None

    peer.on_shell = gone_at_second_batch
    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache) as col:
            plan = col.plan(ops)
            report = col.run(plan)
        assert (report.measured, report.batches_ok, report.batches_failed) == (2, 1, 2)
        failed = [b for b in store.batches(profile.name) if b["status"] == "failed"]
        assert failed and all("lost the adb connection" in b["error"] or
                              "nothing accepts adb connections" in b["error"] for b in failed)
        first = store.measured(plan.context)
        first_rows = {(r.key, r.round): r.measured_at for r in store.rows(plan.context)}
        assert len(first) == 2

        peer.on_shell = None
        peer.come_back()
        with Collector(profile, store, cache_dir=model_cache) as col:
            again = col.plan(ops)
            assert sorted(again.todo) == sorted(set(plan.todo) - first)
            report = col.run(again)
        assert report.measured == 4 and report.batches_failed == 0
        assert _count(store, plan.context) == (6, 6)
        assert store.measured(plan.context) == set(plan.todo)
        after = {(r.key, r.round): r.measured_at for r in store.rows(plan.context)}
        assert {k: after[k] for k in first_rows} == first_rows  # not measured again


def test_a_drop_mid_batch_keeps_what_the_batch_finished(tmp_path, peer, adb_key, model_cache):
    """The cable comes out after the runner printed two of four results: those two are stored,
    and the retry times only the other two."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    ops = _ops(4)
    profile = make_profile(tmp_path, peer.address, adb_key, ops_per_batch=4,
                           retry={"attempts": 2, "backoff_s": 0.05})
    printed = []

    def drop_after_two_results(command: str, chunk: bytes) -> str | None:
        if not _runs(command) or printed == ["dropped"]:
            return None
        printed.extend(line for line in chunk.decode().splitlines() if line.startswith('{"id"'))
        if len(printed) >= 2:
            printed[:] = ["dropped"]
            return "drop"
        return None

    peer.on_output = drop_after_two_results
    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache) as col:
            report = col.run(col.plan(ops))
        assert report.measured == 4 and report.batches_failed == 0, report.to_dict()
        first, retry = store.batches(profile.name)
        assert "lost the adb connection" in first["error"] and first["items"] == 4
        assert retry["items"] == 2 and retry["status"] == "ok"  # only what the drop left
        assert _count(store, store.latest_context(profile.name).context) == (4, 4)


def test_collection_rides_out_a_dropped_connection_with_retries(tmp_path, peer, adb_key, model_cache):
    """The connection drops as the second batch starts (the phone stays reachable): the
    Collector's retry reconnects and the same run measures everything, once."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    ops = _ops(6)
    profile = make_profile(tmp_path, peer.address, adb_key, retry={"attempts": 3, "backoff_s": 0.05})
    started = []

    def drop_second(command: str) -> str | None:
        if _runs(command):
            started.append(command)
            return "drop" if len(started) == 2 else None
        return None

    peer.on_shell = drop_second
    events: list[str] = []
    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache,
                       on_event=lambda stage, *a: events.append(stage)) as col:
            plan = col.plan(ops)
            report = col.run(plan)
        assert "retry" in events
        assert report.measured == 6 and report.batches_failed == 0, report.to_dict()
        assert _count(store, plan.context) == (6, 6)
    assert peer.connections_seen >= 2


# ---- bundled profiles ----------------------------------------------------------------------------

def test_a_run_a_killed_collection_left_on_the_phone_is_ended_by_the_next(tmp_path, peer, adb_key, model_cache):
    """adbd hangs up a command's shell when its client goes, but a tool under `timeout` has a
    process group of its own and times on: the next collection of the phone ends it, and says so."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    marker = f"9{time.time() % 1000:.4f}"
    python = python_that_hangs_once(tmp_path, marker)
    profile = make_profile(tmp_path, peer.address, adb_key, python=str(python))
    proc = collect_in_a_process(Path(profile.source), tmp_path / "latbench.db", model_cache, slice(4, 6))
    try:
        hung_run_timing(marker, profile, proc)
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.5)  # the peer has hung up the shell by now
        assert running(f"sleep {marker}"), "nothing of the run timed on (this test needs it to)"
        with Store(tmp_path / "latbench.db") as store:
            with Collector(profile, store, cache_dir=model_cache) as col:
                assert running(f"sleep {marker}") == []  # ended at connect, before any batch
                ended = col.take_ended_runs()
                report = col.run(col.plan(_ops(2)))
                assert listed_runs(profile) == []  # the old run stopped, and each of this one's ended
        assert len(ended) == 1 and re.fullmatch(
            rf"pid \d+ on {re.escape(col.transport.where)} \(python-that-hangs-once pyrunner.py\), left "
            rf"behind by latbench pid {proc.pid} \(device {re.escape(profile.name)}\)", ended[0]), ended
        assert report.measured == 2
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-f", f"sleep {marker}"])


def test_pixel3_profile_loads_and_builds_its_runner():
    import device_profiles
    from latbench.runners.base import make_runner

    profile = parse_profile(Path(device_profiles.__file__).with_name("pixel3.yaml"))
    assert (profile.transport, profile.runner, profile.runtime, profile.format, profile.threads) == \
        ("adb", "benchmark_model", "litert", "tflite", 1)
    assert profile.connection["cpu_mask"] == "f0" and profile.thermal["max_temp_c"] > 0
    t = open_transport(profile)  # builds without connecting
    assert t.port == 5555 and t.workdir == "/data/local/tmp/latbench"
    assert str(t.key_path).endswith(os.path.join(".android", "adbkey"))
    runner = make_runner(t, profile)
    assert "/data/local/tmp/benchmark_model" in runner.candidates()
    assert runner.cpu_prefix() == ["taskset", "f0"]


def test_adb_template_is_a_valid_profile_that_documents_every_setting(tmp_path):
    import device_profiles

    template = Path(device_profiles.__file__).with_name("TEMPLATE-adb.yaml.txt")
    text = template.read_text()
    for setting in CONNECTION_FIELDS["adb"]:
        assert f"{setting}:" in text, f"the template does not mention connection.{setting}"
    for field in ("runner", "runtime", "format", "threads", "runtime_options", "protocol", "thermal",
                  "retry", "timeout_s"):
        assert f"{field}:" in text, f"the template does not mention {field}"
    copy = tmp_path / "myphone.yaml"
    copy.write_text(text)
    profile = parse_profile(copy)
    assert profile.transport == "adb"
    open_transport(profile)  # its connection settings are accepted too


def test_a_reconnect_whose_kill_of_a_lost_run_fails_keeps_every_lost_run(tmp_path, adb_key):
    """The phone takes the connection but the kill of a dropped connection's run gets no answer
    (a phone under load): connect() closed the link and went on, so its next command reconnected
    from inside connect(), again and again (RecursionError, an internal error), and the other
    lost runs were struck off unkilled."""
    from adb_shell import exceptions as ae

    path = tmp_path / "p.yaml"
    conn = {"address": "10.0.0.2:5555", "adb_key": str(adb_key)}
    path.write_text(yaml.safe_dump({"name": "p", "transport": "adb", "connection": conn}))
    connects = []

    class Phone:
        def connect(self, **_):
            connects.append(1)

        def shell(self, *_, **__):  # the kill's command
            raise ae.TcpTimeoutException("no answer in 30 s")

        def streaming_shell(self, *_, **__):
            raise AssertionError("no command may run before the lost runs are ended")

        def close(self):
            pass

    t = open_transport(parse_profile(path))
    t._make_device = Phone
    t._lost_runs = [("101", "5000", "b1"), ("102", "5001", "b1")]
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "ending a run" in err.value.message and len(connects) == 1
    assert t._lost_runs == [("101", "5000", "b1"), ("102", "5001", "b1")]  # both, for the next connect
    assert t._device is None and err.value.stage == "setup"
