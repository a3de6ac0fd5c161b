"""The ssh transport against a real OpenSSH server on 127.0.0.1 (see tests/sshd.py): host key
checks, login, quoting, timeouts, pushes that skip what the device has, and full collections,
one of them with sshd killed in the middle."""

from __future__ import annotations

import getpass
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import (collect_in_a_process, hung_run_timing, listed_runs, python_that_hangs_once, running,
                      signal_when, wait_for)

from latbench.errors import DeviceError
from latbench.profiles import parse_profile

pytest_plugins = ["sshd"]

# A path with a space, both quotes and a `;`: it must reach the device literally.
ODD = "odd dir 'q\" ;x"


def make_profile(tmp: Path, server, *, name: str = "ssh-test", known_hosts: Path | None = None,
                 workdir: Path | None = None, key_file: Path | None = None, ops_per_batch: int = 2,
                 retry: dict | None = None, python: str = sys.executable, **connection):
    """Write a profile file the way a user would and load it through validation."""
    if known_hosts is None:
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text(server.host_key_line())
    conn = {"host": server.host, "port": server.port, "user": server.user,
            "key_file": str(key_file or server.user_key), "known_hosts": str(known_hosts),
            "connect_timeout_s": 5, "workdir": str(workdir or tmp / ODD / "work")}
    conn.update(connection)
    data = {"name": name, "transport": "ssh", "runner": "python", "runtime": "onnxruntime",
            "format": "onnx", "threads": 1, "python": python, "connection": conn,
            "protocol": {"warmup_runs": 1, "warmup_s": 0.0, "runs": 3, "min_time_s": 0.0,
                         "max_runs": 3, "rounds": 1, "batch_size": ops_per_batch},
            "timeout_s": 120}
    if retry is not None:
        data["retry"] = retry
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_profile(path)


def transport_for(profile):
    from latbench.transports import open_transport

    return open_transport(profile)


def fingerprint(pub: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key file."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


# ---- connection and host keys ---------------------------------------------------------------

def test_connects_with_key_and_known_host(sshd, tmp_path):
    # `~/` in python: is the login's home on the device (a quoted word gets no tilde expansion).
    python = "~/" + os.path.relpath(sys.executable, os.path.expanduser("~"))
    with transport_for(make_profile(tmp_path, sshd, python=python)) as t:
        assert os.path.samefile(t.python(), sys.executable)
        res = t.run(["id", "-un"], 10)
        assert (res.exit_code, res.stdout.strip()) == (0, getpass.getuser())
        assert t.workdir == str(tmp_path / ODD / "work")
        assert (tmp_path / ODD / "work").is_dir()  # created, literally named
        info = t.device_info()
    assert info["reachable"] and info["auth"] and info["host_key"] == "ok"
    assert info["cores"] == os.cpu_count()
    assert info["online_cpus"] == sorted(os.sched_getaffinity(0))  # what cpu_mask may name
    assert info["python"] == platform.python_version()  # profile.python is this interpreter
    assert 0 < info["free_bytes"] <= os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    assert info["model"] == local_model()
    assert info["os"] == " ".join(os.uname()[i] for i in (0, 2, 4))


def local_model() -> str:
    """This host's model the way a board reports it: device tree, else /proc/cpuinfo, else uname."""
    tree = Path("/proc/device-tree/model")
    if tree.exists():
        return tree.read_bytes().rstrip(b"\0").decode()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
            return line.split(":", 1)[1].strip()
    return " ".join(os.uname()[i] for i in (0, 2, 4))


def test_device_info_reads_a_boards_report():
    from latbench.transports.ssh import parse_device_info

    # What the info script prints on a Raspberry Pi 4 (tabs separate the fields).
    text = "\n".join([
        "model\tRaspberry Pi 4 Model B Rev 1.4",
        "cpumodel\t Raspberry Pi 4 Model B Rev 1.4",
        "uname\tLinux 6.6.31+rpt-rpi-v8 aarch64",
        "cores\t4",
        "cpu\tcpu0\tondemand\t600000\t1800000",
        "cpu\tcpu1\tperformance\t1800000\t1800000",
        "cpu\tcpu2\t\t\t",
        "temp\tthermal_zone0\tcpu-thermal\t54530",
        "temp\tthermal_zone1\tgpu\t49",
        "temp\tthermal_zone2\tacpitz\t40000",
        "temp\tthermal_zone3\tacpitz\t85000",  # a zone of the same type: not hidden by the first
        "temp\tthermal_zone4\t\t30000",
        "df\t/dev/mmcblk0p2 30358348 8151988 20938892 29% /",
        "python\t3.11.2",
    ])
    info = parse_device_info(text)
    assert info["model"] == "Raspberry Pi 4 Model B Rev 1.4" and info["cores"] == 4
    assert info["governors"] == {"cpu0": "ondemand", "cpu1": "performance"}
    assert info["frequencies_khz"] == {"cpu0": 600_000, "cpu1": 1_800_000}
    assert info["temperatures_c"] == {"cpu-thermal": 54.53, "gpu": 49.0, "acpitz": 40.0,
                                      "acpitz (thermal_zone3)": 85.0, "thermal_zone4": 30.0}
    assert info["max_temperature_c"] == 85.0
    assert info["free_bytes"] == 20938892 * 1024 and info["python"] == "3.11.2"
    assert parse_device_info("uname\tLinux 5.10 armv7l\n")["model"] == "Linux 5.10 armv7l"


def test_unknown_host_is_refused_with_the_fix(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    t = transport_for(make_profile(tmp_path, sshd, known_hosts=known))
    with pytest.raises(DeviceError) as err:
        t.connect()
    text = str(err.value)
    assert "not in" in text and fingerprint(sshd.root / "host_ed25519.pub") in text
    assert "ssh-keyscan" in text and "trust_unknown_host: true" in text and "--trust-new-host" in text
    assert "\n" not in text
    assert known.read_text() == ""  # nothing was trusted behind the user's back
    assert t.device_info()["host_key"] == "unknown"


@pytest.mark.parametrize("how", ["profile", "flag"])
def test_trusting_a_new_host_remembers_its_key(sshd, tmp_path, how):
    known = tmp_path / "fresh" / "known_hosts"  # neither the file nor its folder exist yet
    profile = make_profile(tmp_path, sshd, known_hosts=known,
                           **({"trust_unknown_host": True} if how == "profile" else {}))
    t = transport_for(profile)
    if how == "flag":
        t.trust_new_host = True  # what `--trust-new-host` sets
    with t:
        assert t.run(["true"], 10).exit_code == 0
    blob = (sshd.root / "host_ed25519.pub").read_text().split()[1]
    assert known.read_text().split() == [sshd.known_name, "ssh-ed25519", blob]
    # The next connection, without trust, checks against the remembered key.
    again = make_profile(tmp_path, sshd, name="ssh-test2", known_hosts=known)
    with transport_for(again) as t2:
        assert t2.run(["true"], 10).exit_code == 0


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_changed_host_key_is_always_refused(sshd, tmp_path, kind):
    from sshd import keygen

    other = keygen(tmp_path / f"other_{kind}", kind)
    key_type, blob = (tmp_path / f"other_{kind}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.known_name} {key_type} {blob}\n")
    t = transport_for(make_profile(tmp_path, sshd, known_hosts=known, trust_unknown_host=True))
    with pytest.raises(DeviceError) as err:
        t.connect()
    text = str(err.value)
    assert "CHANGED" in text and "ssh-keygen -R" in text
    assert fingerprint(other.with_suffix(".pub")) in text
    assert known.read_text() == f"{sshd.known_name} {key_type} {blob}\n"  # not overwritten
    assert t.device_info()["host_key"] == "changed"


def test_known_hosts_marker_lines_are_skipped_and_revoked_keys_refused(sshd, tmp_path):
    from sshd import keygen

    ca = keygen(tmp_path / "ca")
    ca_type, ca_blob = (tmp_path / "ca.pub").read_text().split()[:2]
    key_type, key_blob = (sshd.root / "host_ed25519.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    # A valid OpenSSH file: markers before and after the host's own line.
    known.write_text(f"@cert-authority *.example.org {ca_type} {ca_blob}\n"
                     f"# a comment\n{sshd.host_key_line()}"
                     f"@revoked old-board.example.org {ca_type} {ca_blob}\n")
    with transport_for(make_profile(tmp_path, sshd, known_hosts=known)) as t:
        assert t.run(["true"], 10).exit_code == 0
        assert t.skipped_cert_authorities == 1
    # The server's key revoked: refused, even when new hosts are trusted, and nothing is written.
    known.write_text(sshd.host_key_line() + f"@revoked * {key_type} {key_blob}\n")
    before = known.read_text()
    t = transport_for(make_profile(tmp_path, sshd, known_hosts=known, trust_unknown_host=True))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "@revoked" in err.value.message and fingerprint(sshd.root / "host_ed25519.pub") in err.value.message
    assert known.read_text() == before and "\n" not in str(err.value)
    assert t.device_info()["host_key"] == "revoked"
    assert ca.exists()


def test_a_broken_known_hosts_line_is_skipped_but_a_broken_revoked_line_is_named(sshd, tmp_path):
    import base64

    known = tmp_path / "known_hosts"
    garbage = base64.b64encode(b"garbage").decode()
    # Lines of other hosts that do not parse (bad base64, a key blob paramiko rejects), as
    # OpenSSH skips them: the host's own line still verifies it.
    known.write_text("board ssh-ed25519 not-base64!\n" f"other ssh-rsa {garbage}\n" + sshd.host_key_line())
    with transport_for(make_profile(tmp_path, sshd, known_hosts=known)) as t:
        assert t.run(["true"], 10).exit_code == 0
    known.write_text(sshd.host_key_line() + f"@revoked * ssh-rsa {garbage}\n")
    with pytest.raises(DeviceError) as err:
        transport_for(make_profile(tmp_path, sshd, known_hosts=known)).connect()
    assert f"line 2 of the known_hosts file {known}" in err.value.message and "@revoked" in err.value.message
    assert "remove that line" in err.value.hint


def _command_in(hint: str) -> str:
    """The first `...` shell command a hint gives."""
    return hint.split("`")[1]


def test_the_unknown_host_fix_runs_as_written(sshd, tmp_path):
    if shutil.which("ssh-keyscan") is None:
        pytest.skip("ssh-keyscan is missing (apt-get install openssh-client)")
    known = tmp_path / "no ssh dir yet" / "known_hosts"  # like ~/.ssh on a fresh account
    t = transport_for(make_profile(tmp_path, sshd, known_hosts=known))
    with pytest.raises(DeviceError) as err:
        t.connect()
    command = _command_in(err.value.hint)
    assert command.startswith("mkdir -p ")
    subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)
    with transport_for(make_profile(tmp_path, sshd, known_hosts=known)) as t:
        assert t.run(["true"], 10).exit_code == 0


def test_the_unknown_host_fix_by_ssh_once_trusts_for_latbench(sshd, tmp_path):
    """`ssh ... once` must record the key where the profile's known_hosts is, with its key."""
    if shutil.which("ssh") is None:
        pytest.skip("ssh is missing (apt-get install openssh-client)")
    known = tmp_path / "my keys" / "known_hosts"  # not ~/.ssh/known_hosts, and with a space
    known.parent.mkdir()
    with pytest.raises(DeviceError) as err:
        transport_for(make_profile(tmp_path, sshd, known_hosts=known)).connect()
    command = err.value.hint.split("`")[3]  # the second command: `ssh ...` once
    assert command.startswith("ssh ")
    # What answering "yes" to ssh's question does, without a terminal:
    subprocess.run(["sh", "-c", command + " -o StrictHostKeyChecking=accept-new -o BatchMode=yes true"],
                   check=True, capture_output=True, timeout=30)
    with transport_for(make_profile(tmp_path, sshd, known_hosts=known)) as t:
        assert t.run(["true"], 10).exit_code == 0


def test_the_changed_key_fix_is_quoted_for_any_shell(sshd, tmp_path):
    from sshd import keygen

    keygen(tmp_path / "other")
    key_type, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.known_name} {key_type} {blob}\n")
    with pytest.raises(DeviceError) as err:
        transport_for(make_profile(tmp_path, sshd, known_hosts=known)).connect()
    command = _command_in(err.value.hint)
    assert f"-R '{sshd.known_name}'" in command  # zsh would glob an unquoted [host]:port
    subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)
    assert sshd.known_name not in known.read_text()


@pytest.mark.parametrize("host, fix", [
    ("127.0.0.1:2222", "set host: 127.0.0.1 and port: 2222"),
    ("root@127.0.0.1", "set host: 127.0.0.1 and user: root"),
    ("root@board.invalid:22", "set host: board.invalid and port: 22 and user: root"),
])
def test_a_port_or_user_in_the_host_says_where_they_go(sshd, tmp_path, host, fix):
    with pytest.raises(DeviceError) as err:
        transport_for(make_profile(tmp_path, sshd, host=host)).connect()
    assert "resolve" in err.value.message and fix in err.value.hint


def test_a_public_key_file_is_named_as_such(sshd, tmp_path):
    t = transport_for(make_profile(tmp_path, sshd, key_file=sshd.user_key.with_suffix(".pub")))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert err.value.message == f"the SSH key file {sshd.user_key}.pub is a public key"
    assert f"private key ({sshd.user_key})" in err.value.hint
    info = t.device_info()
    assert info["reachable"] and not info["auth"]  # the board answered; the key is wrong


def test_wrong_user_key_says_how_to_authorize(sshd, tmp_path):
    from sshd import keygen

    stranger = keygen(tmp_path / "stranger")
    t = transport_for(make_profile(tmp_path, sshd, key_file=stranger))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "login" in err.value.message
    # the key latbench logs in with is the one to install, not ssh-copy-id's default
    assert f"ssh-copy-id -i {stranger}.pub " in err.value.hint
    info = t.device_info()
    assert info["reachable"] and not info["auth"]


def test_a_missing_key_file_claims_nothing_about_the_board(sshd, tmp_path):
    from sshd import free_port

    missing = tmp_path / "no such key"
    t = transport_for(make_profile(tmp_path, sshd, key_file=missing, port=free_port()))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert err.value.message == f"the SSH key file {missing} does not exist"
    info = t.device_info()
    assert info["reachable"] is None and not info["auth"]  # never tried: nothing listens there


def test_nothing_listening_is_one_clear_line(sshd, tmp_path):
    from sshd import free_port

    t = transport_for(make_profile(tmp_path, sshd, port=free_port()))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "refused" in err.value.message and "sshd" in err.value.hint
    assert t.device_info()["reachable"] is False


@pytest.mark.parametrize("code", ["EHOSTUNREACH", "ENETUNREACH"])
def test_a_board_that_is_off_is_not_said_to_refuse(sshd, tmp_path, monkeypatch, code):
    """A switched-off board on the LAN: connect() fails with EHOSTUNREACH (ARP gets no answer),
    which paramiko wraps like a refusal, or ENETUNREACH, which it raises as is; no sshd is there
    to refuse anything."""
    import errno
    import socket

    def no_route(self, address):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(socket.socket, "connect", no_route)
    t = transport_for(make_profile(tmp_path, sshd))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert err.value.message == f"cannot reach {sshd.host}:{sshd.port}: {os.strerror(getattr(errno, code))}"
    assert "board is on" in err.value.hint and "connection.host" in err.value.hint
    assert t.device_info()["reachable"] is False


def test_one_refusing_address_means_the_host_is_up(sshd, tmp_path):
    """paramiko tries every address of the name: a refusal from any proves the host runs."""
    import errno

    from paramiko.ssh_exception import NoValidConnectionsError

    t = transport_for(make_profile(tmp_path, sshd))
    both = NoValidConnectionsError({("::1", 22, 0, 0): OSError(errno.EHOSTUNREACH, "No route to host"),
                                    ("127.0.0.1", 22): OSError(errno.ECONNREFUSED, "Connection refused")})
    err = t._connect_error(both)
    assert "refused" in err.message and "sshd" in err.hint and "board is on" not in err.hint


def test_unknown_host_name_is_one_clear_line(sshd, tmp_path):
    t = transport_for(make_profile(tmp_path, sshd, host="no-such-board.invalid"))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert "resolve" in err.value.message and "connection.host" in err.value.hint


def test_a_port_that_never_speaks_ssh_times_out(sshd, tmp_path):
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        t = transport_for(make_profile(tmp_path, sshd, port=silent.getsockname()[1], connect_timeout_s=1))
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.connect()
    assert time.monotonic() - start < 5
    assert "no SSH" in err.value.message and "connect_timeout_s" in err.value.hint


# ---- commands -------------------------------------------------------------------------------

def test_every_argument_reaches_the_device_literally(sshd, tmp_path):
    with transport_for(make_profile(tmp_path, sshd)) as t:
        wd = Path(t.workdir)
        tricky = ["a b", "it's", 'say "hi"', f"; touch {tmp_path}/pwned1", f"$(touch {tmp_path}/pwned2)",
                  f"`touch {tmp_path}/pwned3`", "&&", "|", "$HOME", "*"]
        res = t.run(["printf", "%s\\n", *tricky], 10)
        assert res.stdout.splitlines() == tricky
        # `touch 'x; touch /abs/pwned'` must make the oddly named file only.
        odd_parent = wd / f"x; touch {tmp_path}"
        odd_parent.mkdir(parents=True)
        assert t.run(["touch", f"{wd}/x; touch {tmp_path}/pwned"], 10).exit_code == 0
    assert (odd_parent / "pwned").is_file()
    assert not any((tmp_path / f"pwned{i}").exists() for i in ("", 1, 2, 3))


def test_run_timeout_kills_the_command(sshd, tmp_path):
    marker = f"{time.time() % 1000:.4f}"  # a sleep no one else runs
    with transport_for(make_profile(tmp_path, sshd)) as t:
        start = time.monotonic()
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", "sleep $1 & sleep $1; wait", "sh", f"3{marker}"], 1.0)
        elapsed = time.monotonic() - start
        assert "longer than 1 s" in err.value.message and "timeout_s" in err.value.hint
        assert t.run(["echo", "still usable"], 10).stdout == "still usable\n"
    assert 1.0 <= elapsed < 8
    assert running(f"sleep 3{marker}") == []  # the command and its child are gone


def _drop(t, ready, settle_s: float = 0.0) -> threading.Thread:
    """Cut this side of the connection once `ready()` holds (and `settle_s` later, for output
    in flight to arrive), like a cable pulled mid-run."""
    import socket

    sock = t._client.get_transport().sock

    def cut() -> None:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle_s)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    thread = threading.Thread(target=cut)
    thread.start()
    return thread


def test_a_dropped_connection_is_lost_and_its_run_ended_on_reconnect(sshd, tmp_path):
    marker = f"4{time.time() % 1000:.4f}"  # a sleep no one else runs
    with transport_for(make_profile(tmp_path, sshd)) as t:
        cut = _drop(t, lambda: len(running(f"sleep {marker}")) == 2)
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", "sleep $1 & sleep $1; wait", "sh", marker], 30)
        cut.join()
        # paramiko's exit status -1 is a lost connection, not "the runner exited with -1"
        assert err.value.message.startswith(f"lost the SSH connection to {t.where} while running sh")
        assert "-1" not in str(err.value) and "re-run" in err.value.hint
        assert len(running(f"sleep {marker}")) == 2  # sshd left the run going on the board
        # The next command reconnects, and first ends the old run (the sleep and its child).
        assert t.run(["echo", "again"], 10).stdout == "again\n"
        assert running(f"sleep {marker}") == []
        assert t._lost_runs == []


def test_a_lost_connection_hands_on_what_the_command_printed(sshd, tmp_path):
    """What a run printed before the drop (a runner's finished results) comes with the error,
    without the pid line the transport adds."""
    marker = f"5{time.time() % 1000:.4f}"
    with transport_for(make_profile(tmp_path, sshd)) as t:
        cut = _drop(t, lambda: running(f"sleep {marker}"), settle_s=0.3)  # after the echoes
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", 'echo first; echo second; exec sleep "$1"', "sh", marker], 30)
        cut.join()
        assert err.value.partial_stdout == "first\nsecond\n"
        assert t.run(["echo", "again"], 10).stdout == "again\n"  # and the old run is ended


def test_a_run_past_its_time_hands_on_what_it_printed(sshd, tmp_path):
    with transport_for(make_profile(tmp_path, sshd)) as t:
        with pytest.raises(DeviceError, match="took longer than 1.5 s") as err:
            t.run(["sh", "-c", "echo first; echo second; printf cut; exec sleep 30"], 1.5)
        assert err.value.partial_stdout == "first\nsecond\n"


def test_output_that_comes_with_the_close_is_kept(sshd, tmp_path, monkeypatch):
    """The last output, the exit status and the close can arrive between two reads: the
    transport saw the channel closed and returned what it had read, so a batch lost its last
    result and its end line (a retry), and a hash check its last line (a re-upload)."""
    import paramiko

    real = paramiko.Channel.recv_stderr_ready

    def late(chan):  # everything arrives while the transport looks at stderr
        deadline = time.monotonic() + 10
        while not chan.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(chan)

    with transport_for(make_profile(tmp_path, sshd)) as t:
        monkeypatch.setattr(paramiko.Channel, "recv_stderr_ready", late)
        res = t.run(["sh", "-c", "echo first; echo last; echo oops >&2"], 20)
        monkeypatch.setattr(paramiko.Channel, "recv_stderr_ready", real)
    assert (res.exit_code, res.stdout, res.stderr) == (0, "first\nlast\n", "oops\n")


def test_a_run_printing_without_pause_is_held_to_its_limit(sshd, tmp_path):
    with transport_for(make_profile(tmp_path, sshd)) as t:
        start = time.monotonic()
        with pytest.raises(DeviceError, match="took longer than 1 s") as err:
            t.run(["sh", "-c", "while :; do echo 0123456789abcdef; done"], 1.0)
        assert time.monotonic() - start < 10 and err.value.timed_out
        assert t.run(["echo", "still usable"], 10).stdout == "still usable\n"


def test_a_board_that_goes_silent_is_a_lost_link_not_a_slow_model(sshd_factory, tmp_path):
    """A board that loses power or Wi-Fi mid-run sends nothing, and TCP gives up only after
    many minutes. At timeout_s the kill cannot be sent: that is a lost connection (retried),
    not a model that took too long (set aside for good, with 'raise timeout_s')."""
    import signal

    from sshd import _descendants

    server = sshd_factory()
    marker = f"6{time.time() % 1000:.4f}"
    profile = make_profile(tmp_path, server, connect_timeout_s=2)
    with transport_for(profile) as t:
        sshds = []

        def freeze() -> None:  # the board's sshd stops answering; the run itself goes on
            wait_for(lambda: running(f"sleep {marker}"), 30, "the run to start")
            time.sleep(0.3)  # its pid line reaches the transport
            for pid in [server.proc.pid, *_descendants(server.proc.pid)]:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGSTOP)
                    sshds.append(pid)

        thread = threading.Thread(target=freeze)
        thread.start()
        try:
            start = time.monotonic()
            with pytest.raises(DeviceError) as err:
                t.run(["sleep", marker], 2.0)
            elapsed = time.monotonic() - start
            thread.join()
        finally:
            thread.join()
            for pid in sshds:
                os.kill(pid, signal.SIGCONT)
        assert err.value.message.startswith(f"lost the SSH connection to {t.where} while running sleep"), \
            err.value.message
        assert "did not take the kill" in err.value.message and not err.value.timed_out
        assert "re-run" in err.value.hint and elapsed < 15
        assert running(f"sleep {marker}")  # still going on the board
        # The next command reconnects and first ends the run the silent link left behind.
        assert t.run(["echo", "again"], 10).stdout == "again\n"
        assert running(f"sleep {marker}") == []


def test_ctrl_c_ends_the_run_on_the_board_too(sshd, tmp_path):
    """sshd does not signal a command without a pty when the client goes: an interrupted run
    would go on timing on the board after the lock was freed."""

    marker = f"6{time.time() % 1000:.4f}"
    with transport_for(make_profile(tmp_path, sshd)) as t:
        with signal_when(lambda: len(running(f"sleep {marker}")) == 2, settle_s=0.3), \
                pytest.raises(KeyboardInterrupt) as stopped:
            t.run(["sh", "-c", "echo done; printf cut; sleep $1 & sleep $1; wait", "sh", marker], 30)
        assert running(f"sleep {marker}") == []
        assert stopped.value.partial_stdout == "done\n"  # the runner keeps what had finished
        # a tool under GNU timeout (as batch scripts run them) has a process group of its own
        with signal_when(lambda: len(running(f"sleep {marker}")) == 2, settle_s=0.3), \
                pytest.raises(KeyboardInterrupt):
            t.run(["sh", "-c", "timeout 60 sleep $1", "sh", marker], 30)  # timeout and its sleep
        assert running(f"sleep {marker}") == []
        assert t.run(["echo", "still here"], 10).stdout == "still here\n"


def test_ctrl_c_keeps_what_was_received_but_not_yet_read(sshd, tmp_path, monkeypatch):
    """Ctrl-C while waiting: paramiko's thread may hold output the loop has not read yet."""
    import latbench.transports.ssh as ssh_module

    class Interrupting:  # the wait in which Ctrl-C lands, after the line arrived
        @staticmethod
        def select(rlist, *args):
            deadline = time.monotonic() + 30  # the line is printed once the sleep runs
            while not (running(f"sleep {marker}") and rlist[0].recv_ready()) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # the line may come after the pid line
            raise KeyboardInterrupt

    marker = f"7{time.time() % 1000:.4f}"
    with transport_for(make_profile(tmp_path, sshd)) as t:
        monkeypatch.setattr(ssh_module, "select", Interrupting)
        with pytest.raises(KeyboardInterrupt) as stopped:
            t.run(["sh", "-c", "sleep 0.2; echo done; exec sleep $1", "sh", marker], 30)
        monkeypatch.undo()
        assert stopped.value.partial_stdout == "done\n"
        assert running(f"sleep {marker}") == []  # its pid line was read too: the run was ended


def test_a_shell_killed_by_a_signal_is_not_a_lost_connection(sshd, tmp_path):
    # bash execs the last command of `-c`, so this kills the login shell itself: the channel
    # closes without an exit status while the connection stays up.
    with transport_for(make_profile(tmp_path, sshd)) as t:
        with pytest.raises(DeviceError) as err:
            t.run(["sh", "-c", "kill -9 $$"], 10)
        assert "without an exit status" in err.value.message and "lost" not in err.value.message
        assert t.run(["echo", "same connection"], 10).stdout == "same connection\n"


def test_the_kill_of_a_lost_run_spares_a_reused_pid_and_other_boots(sshd, tmp_path):
    from latbench.transports.remote_runs import run_mark as _run_mark

    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own process group
    try:
        stat = Path(f"/proc/{victim.pid}/stat").read_text().strip()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid, start, got_boot = _run_mark(f"LATBENCH_PID={victim.pid} {boot} {stat}\nout".encode())
        assert (pid, got_boot) == (str(victim.pid), boot) and start == stat.rsplit(")", 1)[1].split()[19]
        assert _run_mark(b"LATBENCH_PID=12") is None  # the line is not complete yet
        with transport_for(make_profile(tmp_path, sshd)) as t:
            assert t._kill((pid, str(int(start) + 1), boot))  # same pid, another process
            assert t._kill((pid, start, "0" * 8 + boot[8:]))  # the board rebooted since
            time.sleep(0.2)
            assert victim.poll() is None
            assert t._kill((pid, start, boot))
            assert victim.wait(timeout=5) == -15
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("program", ["no-such-program-latbench", "/no such venv/bin/python3"])
def test_missing_program_names_the_fix(sshd, tmp_path, program):
    with transport_for(make_profile(tmp_path, sshd)) as t:
        with pytest.raises(DeviceError) as err:
            t.run([program, "x"], 10)
    assert err.value.message.startswith(f"{program} not found on ") and "python:" in err.value.hint


def test_an_exit_127_of_the_program_itself_is_not_called_missing(sshd, tmp_path):
    """Only the shell's own "P: not found" names P missing: not what P says of its arguments."""
    with transport_for(make_profile(tmp_path, sshd)) as t:
        res = t.run(["sh", "-c", "echo 'model.onnx: not found' >&2; exit 127"], 10)
        assert res.exit_code == 127 and "model.onnx" in res.stderr
        if shutil.which("bash"):
            res = t.run(["bash", str(tmp_path / "no such script.sh")], 10)
            assert res.exit_code == 127 and "No such file or directory" in res.stderr


# ---- files ----------------------------------------------------------------------------------

def test_push_skips_what_the_device_has_and_replaces_what_changed(sshd, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(3):
        f = src / f"model {i}.onnx"
        f.write_bytes(os.urandom(50_000 + i))
        files.append(f)
    profile = make_profile(tmp_path, sshd)
    with transport_for(profile) as t:
        remotes = t.stage_many(files)
        assert t.uploads == 3
        assert [Path(r).read_bytes() for r in remotes] == [f.read_bytes() for f in files]
        assert t.stage(files[0]) == remotes[0] and t.uploads == 3
    # A new connection knows nothing: it asks the device for hashes and uploads nothing.
    files[1].write_bytes(b"changed")
    with transport_for(profile) as t:
        t.stage_many(files)
        assert t.uploads == 1
        assert Path(remotes[1]).read_bytes() == b"changed"
        # A file damaged on the device is noticed by the next connection's hash check.
        Path(remotes[2]).write_bytes(b"corrupt")
    with transport_for(profile) as t:
        t.stage_many(files)
        assert t.uploads == 1
        assert Path(remotes[2]).read_bytes() == files[2].read_bytes()
        back = tmp_path / "back.onnx"
        t.pull(remotes[0], back)
        assert back.read_bytes() == files[0].read_bytes()
        with pytest.raises(DeviceError):
            t.pull(f"{t.workdir}/nothing here", back)
    leftovers = [p.name for p in Path(remotes[0]).parent.iterdir() if ".part-" in p.name]
    assert leftovers == []


def test_an_upload_to_a_full_disk_says_so(sshd, tmp_path, monkeypatch):
    """sftp-server reports ENOSPC as a bare "Failure": the error names the full disk, so the
    collection stops at once instead of retrying it as a dropped link."""
    model = tmp_path / "big.onnx"
    model.write_bytes(os.urandom(100_000))
    with transport_for(make_profile(tmp_path, sshd)) as t:
        real_put = t.sftp().put

        def failing_put(*args, **kwargs):
            raise OSError("Failure")

        monkeypatch.setattr(t.sftp(), "put", failing_put)
        free = t._free_kb(t.workdir)
        assert free is not None and free > 0  # df -Pk, read over the same connection
        monkeypatch.setattr(t, "_free_kb", lambda directory: 50)  # 50 KB left on the board
        with pytest.raises(DeviceError, match=r"No space left on device \(50 KB free there\)") as err:
            t.stage(model)
        assert "free space on the board" in err.value.hint
        monkeypatch.setattr(t, "_free_kb", lambda directory: 10**9)  # room enough: another failure
        with pytest.raises(DeviceError, match="OSError: Failure"):
            t.stage(model)
        monkeypatch.setattr(t.sftp(), "put", real_put)


def test_a_failed_rename_fallback_fails_the_upload(sshd, tmp_path, monkeypatch):
    """On an SFTP server without posix-rename the upload is put in place by `mv`; when that
    failed, the old file stayed under the real name and was timed as the new model."""
    from latbench.transports.base import CommandResult

    model = tmp_path / "m.onnx"
    model.write_bytes(b"new model")
    with transport_for(make_profile(tmp_path, sshd)) as t:
        remote = t.stage(model)
        model.write_bytes(b"newer model")

        def no_rename(*args):
            raise OSError("posix-rename not supported")

        monkeypatch.setattr(t.sftp(), "posix_rename", no_rename)
        real_run = t.run
        monkeypatch.setattr(t, "run", lambda argv, timeout_s: CommandResult(1, "", "mv: Permission denied")
                            if argv[0] == "mv" else real_run(argv, timeout_s))
        with pytest.raises(DeviceError, match="cannot put m.onnx in place .*: mv: Permission denied"):
            t.stage(model)
        assert Path(remote).read_bytes() == b"new model" and t.uploads == 1
        assert [p.name for p in Path(remote).parent.iterdir() if ".part-" in p.name] == []
        monkeypatch.setattr(t, "run", real_run)  # mv works: the fallback puts it in place
        assert t.stage(model) == remote and Path(remote).read_bytes() == b"newer model"


def test_an_upload_cut_by_a_lost_link_says_so(sshd, tmp_path, monkeypatch):
    import socket

    model = tmp_path / "m.onnx"
    model.write_bytes(os.urandom(10_000))
    with transport_for(make_profile(tmp_path, sshd)) as t:
        sock = t._client.get_transport().sock

        def cut_put(*args, **kwargs):
            sock.shutdown(socket.SHUT_RDWR)
            raise EOFError()

        monkeypatch.setattr(t.sftp(), "put", cut_put)
        with pytest.raises(DeviceError, match=f"lost the SSH connection to {re.escape(t.where)} while "
                                              "uploading m.onnx") as err:
            t.stage(model)
        assert "re-run" in err.value.hint
        assert t.stage(model)  # reconnects and uploads
        assert t.uploads == 1


def test_a_new_host_key_goes_on_its_own_line(sshd, tmp_path):
    """A hand-edited known_hosts without its last newline: the new key was glued to that line,
    and both hosts became unknown."""
    known = tmp_path / "known_hosts"
    known.write_text("# my boards, no newline at the end")
    with transport_for(make_profile(tmp_path, sshd, known_hosts=known, trust_unknown_host=True)) as t:
        assert t.run(["true"], 10).exit_code == 0
    lines = known.read_text().splitlines()
    assert lines[0] == "# my boards, no newline at the end" and lines[1].startswith(sshd.known_name)
    with transport_for(make_profile(tmp_path, sshd, name="again", known_hosts=known)) as t:
        assert t.run(["true"], 10).exit_code == 0  # the remembered key is read back


def test_a_download_into_a_missing_folder_names_this_hosts_folder(sshd, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with transport_for(make_profile(tmp_path, sshd)) as t:
        remote = t.stage(model)
        with pytest.raises(DeviceError, match="no such folder here"):
            t.pull(remote, tmp_path / "missing" / "m.onnx")


@pytest.mark.parametrize("kind", ["uncreatable", "unwritable"])
def test_a_bad_workdir_is_a_setup_error_after_login(sshd, tmp_path, kind):
    if kind == "uncreatable":
        (tmp_path / "a file").write_text("")
        workdir, what = tmp_path / "a file" / "work", "cannot create"
    else:
        from sshd import unwritable_dir

        workdir, what = unwritable_dir(tmp_path), "cannot write to"
    t = transport_for(make_profile(tmp_path, sshd, workdir=workdir))
    with pytest.raises(DeviceError) as err:
        t.connect()
    assert err.value.message.startswith(f"{what} the work directory {workdir} on ")
    assert "connection.workdir" in err.value.hint
    assert err.value.stage == "setup"  # reached and logged in: doctor must not say unreachable
    assert t._client is None  # closed, not left open half set up
    info = t.device_info()  # connects again and fails the same way
    assert info["reachable"] and info["auth"] and info["host_key"] == "ok"
    assert info["error"].startswith(f"{what} the work directory {workdir} on ") and "connection.workdir" in info["hint"]


def test_cleanup_removes_the_workdir_and_refuses_a_root(sshd, tmp_path):
    with transport_for(make_profile(tmp_path, sshd)) as t:
        t.stage(Path(__file__))
        t.cleanup()
        assert not Path(t.workdir).exists()
    with transport_for(make_profile(tmp_path, sshd, workdir=Path("/"))) as t:
        with pytest.raises(DeviceError):
            t.cleanup()


# ---- collection over SSH --------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _ops(n: int):
    from latbench.spaces.fbnet import FBNetSpace

    return FBNetSpace("cifar").ops()[4:4 + n]


def test_full_collection_over_ssh(sshd, tmp_path, model_cache):
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    ops = _ops(4)
    # a shared 2-core CI host can stall a handshake past a few seconds: that is a retry, and a
    # retry uploads another batch file, which the counts below would report without its cause
    profile = make_profile(tmp_path, sshd, connect_timeout_s=20)
    retries = []
    on_event = lambda stage, done, total, info: stage == "retry" and retries.append(info["error"])
    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache, on_event=on_event) as col:
            plan = col.plan(ops)
            report = col.run(plan)
            uploads = col.transport.uploads
        assert retries == [] and report.measured == 4 and report.batches_failed == 0, (retries, report.to_dict())
        rows = store.rows(plan.context)
        assert sorted(r.key for r in rows) == sorted(op.key for op in ops)
        assert all(r.median_ms > 0 and r.count == 3 for r in rows)
        assert plan.runtime_label.startswith("onnxruntime ")
        # runner + 4 models + 2 batch files went to the literally named workdir
        models = Path(profile.connection["workdir"]) / "models"
        assert len(list(models.glob("*.onnx"))) == 4
        assert uploads == 1 + 4 + 2
        import json
        import platform
        import sqlite3

        with sqlite3.connect(tmp_path / "latbench.db") as conn:
            runners = [json.loads(r) for (r,) in conn.execute("SELECT runner FROM batches")]
        assert runners and all(r["hostname"] == platform.node() for r in runners)  # which board
        # the runner removed each batch file once read: none pile up on the board
        assert list((Path(profile.connection["workdir"]) / "batches").glob("*.json")) == []
        # Re-running measures nothing and pushes nothing.
        with Collector(profile, store, cache_dir=model_cache, on_event=on_event) as col:
            again = col.plan(ops)
            assert again.todo == [] and again.already == 4
            assert col.run(again).measured == 0
            assert col.transport.uploads == 0


def _count(store, ctx) -> tuple[int, int]:
    rows = store.rows(ctx)
    return len(rows), len({(r.key, r.round) for r in rows})


def test_sshd_killed_mid_collection_loses_nothing(sshd_factory, tmp_path, model_cache):
    """sshd dies after the first batch: the rest is recorded as failed; after a restart the
    re-run measures exactly what is missing."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    server = sshd_factory()
    ops = _ops(6)
    profile = make_profile(tmp_path, server, retry={"attempts": 1})

    def kill_after_first(stage, done, total, info):
        if stage == "measure" and done == 2:
            server.kill()

    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache, on_event=kill_after_first) as col:
            plan = col.plan(ops)
            report = col.run(plan)
        assert (report.measured, report.batches_ok, report.batches_failed) == (2, 1, 2)
        failed = [b for b in store.batches(profile.name) if b["status"] == "failed"]
        assert len(failed) == 2 and all("refused" in b["error"] or "lost" in b["error"] for b in failed)
        first = store.measured(plan.context)
        assert len(first) == 2

        server.start()
        with Collector(profile, store, cache_dir=model_cache) as col:
            again = col.plan(ops)
            assert sorted(again.todo) == sorted(set(plan.todo) - first)
            report = col.run(again)
        assert report.measured == 4 and report.batches_failed == 0
        assert _count(store, plan.context) == (6, 6)
        assert store.measured(plan.context) == set(plan.todo)


def test_collection_rides_out_an_sshd_restart_with_retries(sshd_factory, tmp_path, model_cache):
    """sshd dies after the first batch and comes back 1.5 s later: the Collector's retry with
    backoff reconnects and the same run measures everything, once."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    server = sshd_factory()
    ops = _ops(6)
    profile = make_profile(tmp_path, server, retry={"attempts": 5, "backoff_s": 0.5, "max_backoff_s": 2})
    events: list[str] = []

    def kill_after_first(stage, done, total, info):
        events.append(stage)
        if stage == "measure" and done == 2:
            server.kill()
            threading.Timer(1.5, server.start).start()

    with Store(tmp_path / "latbench.db") as store:
        with Collector(profile, store, cache_dir=model_cache, on_event=kill_after_first) as col:
            plan = col.plan(ops)
            report = col.run(plan)
        assert "retry" in events
        assert report.measured == 6 and report.batches_failed == 0, report.to_dict()
        assert _count(store, plan.context) == (6, 6)


# ---- bundled profiles -----------------------------------------------------------------------

@pytest.mark.parametrize("name, runner, runtime, fmt", [
    ("rpi4", "python", "litert", "tflite"),
    ("jetson-orin-nano", "trtexec", "tensorrt", "onnx"),
    ("jetson-orin-nano-ort", "python", "onnxruntime", "onnx"),
])
def test_bundled_ssh_profiles_load(name, runner, runtime, fmt):
    import device_profiles
    from latbench.runners.base import make_runner

    profile = parse_profile(Path(device_profiles.__file__).with_name(f"{name}.yaml"))
    assert (profile.transport, profile.runner, profile.runtime, profile.format) == ("ssh", runner, runtime, fmt)
    t = transport_for(profile)  # builds without connecting
    assert t.port == 22 and t.known_hosts.endswith("known_hosts") and not t.trust_new_host
    assert make_runner(t, profile).name == runner  # the runner accepts the profile's options


def test_ssh_template_is_a_valid_profile_that_documents_every_setting(tmp_path):
    import device_profiles
    from latbench.profiles import CONNECTION_FIELDS

    template = Path(device_profiles.__file__).with_name("TEMPLATE-ssh.yaml.txt")
    text = template.read_text()
    for setting in CONNECTION_FIELDS["ssh"]:
        assert f"{setting}:" in text, f"the template does not mention connection.{setting}"
    copy = tmp_path / "myboard.yaml"
    copy.write_text(text)
    profile = parse_profile(copy)
    assert profile.transport == "ssh"
    # Every timing setting is shown with its real default, so the copy means what the file says.
    from latbench.protocol import Protocol

    shown = yaml.safe_load(text)["protocol"]
    assert set(Protocol().timing()) <= set(shown)
    assert shown["rel_ci"] == Protocol().rel_ci and shown["max_time_s"] == Protocol().max_time_s
    from latbench.profiles import _RETRY_FIELDS

    assert set(yaml.safe_load(text)["retry"]) == set(_RETRY_FIELDS)  # every retry setting shown


def test_a_run_a_killed_collection_left_on_the_board_is_ended_by_the_next(sshd, tmp_path, model_cache):
    """sshd leaves a command running when its client goes, and a collection killed outright
    (SIGKILL, the OOM killer) cannot end its run: the next collection of the board ends it before
    its first command there, and says so."""
    pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime")
    from latbench.collect import Collector
    from latbench.store import Store

    marker = f"9{time.time() % 1000:.4f}"
    python = python_that_hangs_once(tmp_path, marker)
    profile = make_profile(tmp_path, sshd, python=str(python))
    proc = collect_in_a_process(Path(profile.source), tmp_path / "latbench.db", model_cache, slice(4, 6))
    try:
        left = hung_run_timing(marker, profile, proc)
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.5)
        assert running(f"sleep {marker}") == left, "sshd left the run going on the board"
        events = []
        with Store(tmp_path / "latbench.db") as store:
            with Collector(profile, store, cache_dir=model_cache,
                           on_event=lambda stage, *a: events.append((stage, a))) as col:
                assert running(f"sleep {marker}") == []  # ended at connect, before any batch
                ended = col.take_ended_runs()
                report = col.run(col.plan(_ops(2)))
                assert listed_runs(profile) == []  # the old run stopped, and each of this one's ended
        assert len(ended) == 1 and re.fullmatch(  # the pid of the run's login shell
            rf"pid \d+ on {re.escape(col.transport.where)} \(python-that-hangs-once pyrunner.py\), left "
            rf"behind by latbench pid {proc.pid} \(device {re.escape(profile.name)}\)", ended[0]), ended
        assert report.measured == 2 and not [e for e in events if e[0] == "ended"]  # said once
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-f", f"sleep {marker}"])
