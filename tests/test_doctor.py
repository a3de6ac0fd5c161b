"""`latbench doctor` as a user runs it (a subprocess): on this host, over SSH to a real sshd on
127.0.0.1 (see tests/sshd.py), with the runtime missing on the device, with nothing listening
and with a host key never seen before. Every failing row carries its fix; exit 1 on a FAIL."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["sshd"]

#: Every row doctor shows once a device answered, in table order.
ALL_CHECKS = ["profile", "home", "reachable", "auth", "runtime", "device", "cores", "governor",
              "temperature", "free space", "steadiness"]


def doctor(cli, device: str, *flags: str, probe: bool = False) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """Run `latbench doctor --device DEVICE --json FLAGS` (with --no-probe unless `probe`: the
    steadiness probe times an op for seconds); the rows keyed by check, in order."""
    res = cli("doctor", "--device", device, "--json", *flags, *(() if probe else ("--no-probe",)))
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    rows = json.loads(res.stdout)
    assert len({r["check"] for r in rows}) == len(rows), rows  # one row per check
    return res, {r["check"]: r for r in rows}


def ssh_profile(make_profile, tmp_path: Path, server, name: str = "ssh-doctor", *,
                python: str = sys.executable, known_hosts: Path | None = None, **connection) -> str:
    """An ssh profile in the test LATBENCH_HOME, written the way a user would."""
    if known_hosts is None:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.host_key_line())
    conn = {"host": server.host, "port": server.port, "user": server.user,
            "key_file": str(server.user_key), "known_hosts": str(known_hosts),
            "connect_timeout_s": 5, "workdir": str(tmp_path / "board work")}
    conn.update(connection)
    return make_profile(name, transport="ssh", python=python, connection=conn)


def ort_version() -> str:
    ort = pytest.importorskip("onnxruntime", reason="the python runner here needs onnxruntime: "
                                                    "pip install onnxruntime")
    return ort.__version__


def assert_free_space(row: dict, workdir: Path) -> None:
    """The row names the work directory and roughly its filesystem's free space."""
    assert row["status"] == "ok", row
    m = re.fullmatch(r"(\d+) MiB in (.+)", row["detail"])
    assert m, row
    assert Path(m.group(2)) == workdir and workdir.is_dir()
    free_mib = shutil.disk_usage(workdir).free / 2**20
    assert abs(int(m.group(1)) - free_mib) <= max(256, 0.05 * free_mib), (row, free_mib)


def assert_steadiness(row: dict) -> None:
    """The probe ran its 5 separate runs, and the status follows its round spread (ok up to
    10%; a warning with its fix above: this host's neighbours may well make it one)."""
    m = re.search(r" in 5 separate runs \([\d.]+ s\): medians ([\d.]+(?:e[+-]\d+)?)-([\d.]+(?:e[+-]\d+)?) ms, spread between runs "
                  r"\(max - min\) / median "
                  r"([\d.]+)%; within a run IQR/median [\d.]+%", row["detail"])
    assert m, row
    low, high, spread = (float(v) for v in m.groups())
    assert 0 < low <= high and spread >= 0
    if abs(spread - 10) > 0.05:  # the figure is rounded: at 10.0% either status is right
        assert row["status"] == ("ok" if spread <= 10 else "warn"), row
    assert bool(row["fix"]) == (row["status"] == "warn"), row


def fingerprint(pub: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key file."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh virtual environment's python: it has no onnxruntime, whatever this one has."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import onnxruntime"], capture_output=True)
    assert probe.returncode != 0, "a fresh venv should not see onnxruntime"
    return python


# ---- this host --------------------------------------------------------------------------------

def test_doctor_on_this_host_passes(latbench_cli, latbench_home):
    version = ort_version()
    res, rows = doctor(latbench_cli, "local", probe=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(rows) == ALL_CHECKS
    assert_steadiness(rows["steadiness"])
    assert all(r["status"] in ("ok", "warn") for r in rows.values()), rows
    assert all(r["fix"] for r in rows.values() if r["status"] == "warn"), rows  # each warning says what to do
    assert f"onnxruntime {version}" in rows["runtime"]["detail"]
    assert rows["cores"]["detail"] == str(os.cpu_count())
    assert_free_space(rows["free space"], latbench_home / "work" / "local")
    zones = [z for z in Path("/sys/class/thermal").glob("thermal_zone*/temp") if os.access(z, os.R_OK)]
    if not zones:  # a VM like CI's: the warning says what is lost and what would fix it
        temperature = rows["temperature"]
        assert temperature["status"] == "warn" and "temperatures are not recorded" in temperature["detail"]
        assert "/sys/class/thermal/thermal_zone*/temp readable" in temperature["fix"]


def test_doctor_table_shows_each_row(latbench_cli):
    version = ort_version()
    res = latbench_cli("doctor", "--device", "local", "--no-probe")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    for check in ALL_CHECKS[:-1]:
        assert re.search(rf"│ {check} +│ (ok|warn) ", res.stdout), (check, res.stdout)
    assert re.search(r"│ steadiness +│ skipped +│ not run \(--no-probe\)", res.stdout), res.stdout
    assert f"onnxruntime {version}" in res.stdout


# ---- over SSH ---------------------------------------------------------------------------------

def test_doctor_over_ssh_passes(sshd, latbench_cli, make_profile, tmp_path):
    version = ort_version()
    name = ssh_profile(make_profile, tmp_path, sshd)
    res, rows = doctor(latbench_cli, name, probe=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list(rows) == ALL_CHECKS
    assert_steadiness(rows["steadiness"])  # timed on the board, over SSH
    assert all(r["status"] in ("ok", "warn") for r in rows.values()), rows
    assert f"{sshd.user}@{sshd.host}:{sshd.port}" in rows["reachable"]["detail"]
    assert f"onnxruntime {version}" in rows["runtime"]["detail"]
    assert rows["cores"]["detail"] == str(os.cpu_count())
    assert_free_space(rows["free space"], tmp_path / "board work")


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_missing_runtime_fails_with_the_install_command(transport, sshd, latbench_cli, make_profile,
                                                        tmp_path, bare_python):
    if transport == "local":
        name = make_profile("no-ort", python=bare_python)
    else:
        name = ssh_profile(make_profile, tmp_path, sshd, python=bare_python)
    res, rows = doctor(latbench_cli, name, probe=True)
    assert res.returncode == 1
    assert rows["steadiness"] == {"check": "steadiness", "status": "skipped",
                                  "detail": "the runtime does not start", "fix": ""}
    row = rows["runtime"]
    assert row["status"] == "FAIL" and "onnxruntime" in row["detail"] and bare_python in row["detail"]
    # the board's own interpreter installs it: a bare `pip` there may be another Python's
    assert row["fix"].startswith(f"{shlex.quote(bare_python)} -m pip install onnxruntime"), row
    # Only the runtime is wrong: the device itself is fine.
    assert [c for c, r in rows.items() if r["status"] == "FAIL"] == ["runtime"]
    assert rows["cores"]["detail"] == str(os.cpu_count())


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_missing_python_names_the_profile_setting(transport, sshd, latbench_cli, make_profile, tmp_path):
    python = str(tmp_path / "no such venv" / "bin" / "python3")  # the template's venv, never made
    if transport == "local":
        name = make_profile("no-python", python=python)
    else:
        name = ssh_profile(make_profile, tmp_path, sshd, python=python)
    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 1
    assert rows["runtime"]["status"] == "FAIL" and "not found" in rows["runtime"]["detail"]
    assert "python:" in rows["runtime"]["fix"]


@pytest.mark.parametrize("kind", ["uncreatable", "unwritable"])
def test_a_bad_workdir_is_named_after_a_good_login(kind, sshd, latbench_cli, make_profile, tmp_path):
    if kind == "uncreatable":
        (tmp_path / "a file").write_text("")
        workdir = tmp_path / "a file" / "work"
    else:
        from sshd import unwritable_dir

        workdir = unwritable_dir(tmp_path)
    name = ssh_profile(make_profile, tmp_path, sshd, workdir=str(workdir))
    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 1
    assert rows["reachable"]["status"] == "ok" and rows["auth"]["status"] == "ok", rows
    row = rows["work dir"]
    assert row["status"] == "FAIL" and str(workdir) in row["detail"] and "connection.workdir" in row["fix"]
    assert [c for c, r in rows.items() if r["status"] == "FAIL"] == ["work dir"]


def test_unreachable_device_fails_with_a_fix_and_skips_the_rest(sshd, latbench_cli, make_profile, tmp_path):
    from sshd import free_port

    name = ssh_profile(make_profile, tmp_path, sshd, port=free_port())  # nothing listens there
    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 1
    assert list(rows) == [c for c in ALL_CHECKS if c != "device"]
    assert rows["reachable"]["status"] == "FAIL" and "refused" in rows["reachable"]["detail"]
    assert "sshd" in rows["reachable"]["fix"] and "connection.port" in rows["reachable"]["fix"]
    assert all(rows[c]["status"] == "skipped" for c in ALL_CHECKS[4:] + ["auth"] if c in rows)
    # The table says the same, with no traceback.
    table = latbench_cli("doctor", "--device", name)
    assert table.returncode == 1 and "Traceback" not in table.stdout + table.stderr
    assert "refused" in table.stdout and "FAIL" in table.stdout


def test_a_missing_key_file_does_not_say_the_board_answered(sshd, latbench_cli, make_profile, tmp_path):
    from sshd import free_port

    missing = tmp_path / "no such key"
    name = ssh_profile(make_profile, tmp_path, sshd, key_file=str(missing), port=free_port())
    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 1
    assert rows["reachable"]["status"] == "skipped" and "answered" not in rows["reachable"]["detail"]
    assert rows["auth"]["status"] == "FAIL" and str(missing) in rows["auth"]["detail"]
    assert "connection.key_file" in rows["auth"]["fix"]


def test_unknown_host_key_fails_until_trusted_on_purpose(sshd, latbench_cli, make_profile, tmp_path):
    ort_version()
    known = tmp_path / "known_hosts"
    known.write_text("")
    name = ssh_profile(make_profile, tmp_path, sshd, known_hosts=known)
    fp = fingerprint(sshd.root / "host_ed25519.pub")

    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 1
    assert rows["reachable"]["status"] == "ok"  # it answered; the key is what is wrong
    auth = rows["auth"]
    assert auth["status"] == "FAIL" and fp in auth["detail"]
    assert "--trust-new-host" in auth["fix"] and "trust_unknown_host" in auth["fix"]
    assert all(rows[c]["status"] == "skipped" for c in ALL_CHECKS[4:] if c in rows)
    assert known.read_text() == ""  # nothing trusted behind the user's back

    res, rows = doctor(latbench_cli, name, "--trust-new-host")
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows["auth"]["status"] == "ok" and fp in rows["auth"]["detail"]  # says what it trusted
    assert known.read_text().split()[:2] == [sshd.known_name, "ssh-ed25519"]

    # Remembered: the next run passes without the flag.
    res, rows = doctor(latbench_cli, name)
    assert res.returncode == 0 and rows["auth"]["status"] == "ok"
    assert fp not in rows["auth"]["detail"]


def test_invalid_profile_is_a_failed_check_in_json(latbench_cli, latbench_home):
    bad = latbench_home / "devices" / "broken.yaml"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("name: broken\ntransport: ssh\nrunner: python\nruntime: onnxruntime\n"
                   "format: onnx\nconnection: {host: board, prot: 22}\n")
    res, rows = doctor(latbench_cli, "broken")
    assert res.returncode == 1
    assert list(rows) == ["profile"]
    row = rows["profile"]
    assert row["status"] == "FAIL" and str(bad) in row["detail"] and "'prot'" in row["detail"]
    assert "port" in row["fix"]  # did you mean
    # Without --json it stays one line on stderr.
    table = latbench_cli("doctor", "--device", "broken")
    assert table.returncode == 1 and "'prot'" in table.stderr and "Traceback" not in table.stderr


def test_a_home_collect_could_not_write_fails_doctor(make_profile, tmp_path, latbench_home):
    """doctor passed (exit 0) while `collect` then refused at once: the home was never looked at."""
    from conftest import run_cli, write_profile
    from latbench.cli.doctor import diagnose
    from latbench.profiles import load_profile

    # a project folder's profile (./device_profiles), since the home cannot hold one
    write_profile(tmp_path, "homeless", connection={"workdir": str(tmp_path / "work")})
    (tmp_path / "devices").rename(tmp_path / "device_profiles")
    (tmp_path / "a-file").write_text("")
    res = run_cli("doctor", "--device", "homeless", "--json", "--no-probe",
                  env_home=tmp_path / "a-file" / "home", cwd=tmp_path)
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    assert res.returncode == 1 and rows["home"]["status"] == "FAIL", rows
    assert "cannot write to latbench home" in rows["home"]["detail"] and "LATBENCH_HOME" in rows["home"]["fix"]
    rows = {r["check"]: r for r in diagnose(load_profile(make_profile("homed")), probe=False)}
    assert rows["home"] == {"check": "home", "status": "ok", "detail": str(latbench_home), "fix": ""}


def test_a_runner_that_cannot_start_is_a_failed_runtime_row(latbench_cli, make_profile, tmp_path):
    """A tool runner's ProfileError from info() (binary_local missing) escaped every row:
    doctor --json printed nothing, and the table was lost."""
    make_profile("no-tool", runner="onnxruntime_perf_test",
                 runtime_options={"binary_local": str(tmp_path / "no-such-perf-test")})
    res, rows = doctor(latbench_cli, "no-tool")
    assert res.returncode == 1
    assert rows["runtime"]["status"] == "FAIL" and "no-such-perf-test" in rows["runtime"]["detail"], rows
    assert rows["reachable"]["status"] == "ok"


def test_a_cpu_mask_outside_this_processs_cores_is_not_called_offline():
    """On this host `online_cpus` is the process's affinity (taskset, a container's cpuset):
    a mask outside it was "offline" with "wake the device and keep it cool"."""
    from latbench.cli.doctor import cpu_mask_row
    from latbench.profiles import DeviceProfile

    profile = DeviceProfile(name="pinned", transport="local", connection={"cpu_mask": "4"})
    check, status, detail, fix = cpu_mask_row(profile, {"cores": 4, "online_cpus": [0, 1]})
    assert status == "FAIL" and "may only run on cores 0-1 here" in detail, detail
    assert "wake" not in fix and "fix connection.cpu_mask" in fix and "(e.g. 3 for cores 0-1)" in fix
    phone = DeviceProfile(name="phone", transport="adb", connection={"cpu_mask": "4", "address": "p"})
    assert "offline now" in cpu_mask_row(phone, {"cores": 4, "online_cpus": [0, 1]})[2]  # a phone parks cores


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_cpu_mask_is_checked_against_the_devices_cores(transport, sshd, latbench_cli, make_profile,
                                                       tmp_path):
    ort_version()
    cores = sorted(os.sched_getaffinity(0))
    beyond = max(cores) + 1  # a core this host (the board) does not have
    mask = format((1 << beyond) | (1 << cores[0]), "x")

    def profile(name: str, cpu_mask: str) -> str:
        if transport == "local":
            return make_profile(name, connection={"cpu_mask": cpu_mask})
        return ssh_profile(make_profile, tmp_path, sshd, name, cpu_mask=cpu_mask)

    res, rows = doctor(latbench_cli, profile("too-many", mask))
    assert res.returncode == 1
    row = rows["cpu mask"]
    assert row["status"] == "FAIL" and f"names cores {beyond}," in row["detail"], row
    assert "fix connection.cpu_mask" in row["fix"]
    assert [c for c, r in rows.items() if r["status"] == "FAIL"] == ["cpu mask"]

    res, rows = doctor(latbench_cli, profile("pinned", format(1 << cores[0], "x")))
    assert res.returncode == 0, rows
    assert rows["cpu mask"]["status"] == "ok"
    assert rows["cpu mask"]["detail"].startswith(f"pinned to cores {cores[0]} (mask")
    assert list(rows) == ALL_CHECKS[:7] + ["cpu mask"] + ALL_CHECKS[7:]


def test_more_threads_than_cores_is_a_warning(make_profile):
    from latbench.cli.doctor import diagnose
    from latbench.profiles import load_profile

    cores = len(os.sched_getaffinity(0))
    rows = {r["check"]: r for r in diagnose(load_profile(make_profile("crowded", threads=cores + 3)), probe=False)}
    assert rows["cores"]["status"] == "warn" and f"is more than the {cores} it may use" in rows["cores"]["detail"]
    assert rows["cores"]["fix"] == f"set threads: {cores} or fewer"
    pinned = make_profile("pinned-one", threads=2, connection={"cpu_mask": "1"})  # 2 threads, 1 core
    rows = {r["check"]: r for r in diagnose(load_profile(pinned), probe=False)}
    assert rows["cores"]["status"] == "warn" and "is more than the 1 it may use" in rows["cores"]["detail"]
    rows = {r["check"]: r for r in diagnose(load_profile(make_profile("fits", threads=1)), probe=False)}
    assert rows["cores"]["status"] == "ok" and "converter" not in rows  # an onnx profile converts nothing


def test_a_tflite_profile_checks_the_converter_on_this_host(monkeypatch):
    import latbench.tflite as tflite
    from latbench.cli.doctor import diagnose
    from latbench.errors import ExportError
    from latbench.profiles import load_profile

    def missing():
        raise ExportError("litert-torch is not installed, so .tflite models cannot be made", tflite.INSTALL_HINT)
    monkeypatch.setattr(tflite, "converter_version", missing)
    rows = {r["check"]: r for r in diagnose(load_profile("local-tflite"), probe=False)}
    assert rows["converter"]["status"] == "FAIL" and "litert-torch is not installed" in rows["converter"]["detail"]
    assert rows["converter"]["fix"] == "pip install -e .[tflite]"


# ---- the steadiness probe ---------------------------------------------------------------------

class _Runner:
    """A runner whose runs time the probe op at the given medians, one per run; or whose
    results are `result` (a dict), or whose runs raise `result` (an exception)."""

    def __init__(self, medians_ms=(), result=None):
        from types import SimpleNamespace

        self.medians_ms, self.result, self.runs = list(medians_ms), result, []
        self.transport = SimpleNamespace(ended_runs=[])  # what its transport stopped first

    def run_batch(self, items):
        from latbench.runners.base import BatchOutput

        (item,) = items
        self.runs.append(item.id)
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result is not None:
            return BatchOutput(start={}, results={item.id: self.result})
        median = self.medians_ms[len(self.runs) - 1]
        return BatchOutput(start={}, results={item.id: {"ok": True, "samples_ms": [median * f for f in
                                                                                 (0.99, 1.0, 1.0, 1.01)]}})


@pytest.fixture
def probe_export(monkeypatch):
    """The probe's model export, replaced (these runners never read the file), and no pause
    between its runs; set `probe_export.error` to make the export fail."""
    import latbench.export
    import latbench.probe

    monkeypatch.setattr(latbench.probe, "PROBE_GAP_S", 0.0)

    class Export:
        error: Exception | None = None

        def __call__(self, op, fmt):
            if self.error is not None:
                raise self.error
            return Path("/nonexistent/probe.onnx")
    export = Export()
    monkeypatch.setattr(latbench.export, "export", export)
    return export


@pytest.mark.parametrize("medians_ms, status, spread", [
    ((1.0, 1.02, 0.99, 1.0, 1.01), "ok", "3.0%"),
    ((1.0, 1.0, 1.3, 1.0, 1.0), "warn", "30.0%"),  # one run at another speed
])
def test_the_steadiness_probe_warns_when_separate_runs_disagree(probe_export, make_profile, medians_ms, status,
                                                                 spread):
    from latbench.cli.doctor import steadiness_row
    from latbench.profiles import load_profile

    runner = _Runner(medians_ms)
    check, got, detail, fix = steadiness_row(runner, load_profile(make_profile("probed")))
    assert (check, got) == ("steadiness", status)
    assert runner.runs == [f"probe-{i}" for i in range(5)]  # five separate runs, not one batch
    assert (f"medians {min(medians_ms):.3g}-{max(medians_ms):.3g} ms, spread between runs (max - min) / median "
            f"{spread}") in detail, detail
    assert "within a run IQR/median 0.5%" in detail  # each run alone looked clean
    assert ("cpu_mask" in fix and "protocol.rounds" in fix) if status == "warn" else fix == ""


def test_the_steadiness_row_names_a_left_behind_run_it_stopped_first(probe_export, make_profile):
    from latbench.cli.doctor import steadiness_row
    from latbench.profiles import load_profile

    runner = _Runner((1.0,) * 5)
    runner.transport.ended_runs = ["pid 9 on this host (sh batch.sh), left behind by latbench pid 8 (device d)"]
    _, status, detail, _ = steadiness_row(runner, load_profile(make_profile("probed")))
    assert status == "ok" and detail.endswith(
        "; first stopped pid 9 on this host (sh batch.sh), left behind by latbench pid 8 (device d)")
    assert runner.transport.ended_runs == []  # said once


@pytest.mark.parametrize("result, status, detail", [
    ({"ok": False, "error": "Unsupported op: Conv"}, "FAIL",
     "did not time on the device: run 1 of 5: Unsupported op: Conv"),
    ({"ok": True, "samples_ms": []}, "FAIL", "run 1 of 5: unreadable result: "),
    ("DeviceError", "FAIL", "did not time on the device: lost the connection"),
    ({"ok": True, "summary": {"count": 50, "mean_ms": 2.0, "std_ms": 0.1}}, "ok",
     "medians 2-2 ms, spread between runs (max - min) / median 0.0%"),  # a tool's mean and std
    ({"ok": True, "summary": {"count": 100, "mean_ms": 4.8}}, "ok",  # perf_test without its file: no
     "within a run IQR/median unknown (the runner printed no spread)"),  # spread, where it said nan%
])
def test_a_probe_that_does_not_time_is_one_row_that_says_why(probe_export, make_profile, result, status, detail):
    from latbench.cli.doctor import steadiness_row
    from latbench.errors import DeviceError
    from latbench.profiles import load_profile

    if result == "DeviceError":
        result = DeviceError("lost the connection to the board", "check the cable")
    row = steadiness_row(_Runner(result=result), load_profile(make_profile("probed")))
    assert row[:2] == ("steadiness", status) and detail in row[2], row
    assert bool(row[3]) == (status == "FAIL"), row
    reported = isinstance(result, dict) and "summary" in result
    named = "printed no samples: median_ms, p10_ms, p90_ms, q1_ms, q3_ms estimated from what it printed"
    assert (named in row[2]) == reported, row


def test_a_probe_model_that_cannot_be_made_or_a_busy_device_skips_the_probe(probe_export, make_profile):
    from latbench.cli.doctor import steadiness_row
    from latbench.errors import ExportError
    from latbench.locks import device_lock
    from latbench.profiles import load_profile

    profile = load_profile(make_profile("probed"))
    probe_export.error = ExportError("litert-torch is not installed", "pip install -e .[tflite]")
    assert steadiness_row(_Runner((1.0,) * 5), profile) == (
        "steadiness", "warn", "not run: the probe model could not be made: litert-torch is not installed",
        "pip install -e .[tflite]")
    probe_export.error = RuntimeError("torch.onnx failed")  # the exporter's own: a row, no traceback
    row = steadiness_row(_Runner((1.0,) * 5), profile)
    assert row[1] == "warn" and "RuntimeError: torch.onnx failed" in row[2] and "--debug collect" in row[3]
    probe_export.error = None
    runner = _Runner((1.0,) * 5)
    with device_lock(profile):  # a collection that started after doctor looked
        row = steadiness_row(runner, profile)
    assert row[1] == "skipped" and "the device was taken meanwhile" in row[2] and runner.runs == []
