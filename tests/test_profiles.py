"""Device profiles: validation errors that name file, field and fix; the lookup order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from latbench.errors import ProfileError, UsageError
from latbench.profiles import DeviceProfile, find_profile, list_profiles, load_profile, parse_profile
from latbench.protocol import Protocol

BUNDLED = Path(__file__).resolve().parents[1] / "device_profiles"


def write(tmp_path: Path, text: str, name: str = "board") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(path)
    err = info.value
    assert str(path) in err.message, "the error must name the file"
    assert err.hint, "the error must say how to fix it"
    assert "\n" not in str(err)
    return err


def test_the_bundled_local_profile_is_valid():
    prof = parse_profile(BUNDLED / "local.yaml")
    assert (prof.name, prof.transport, prof.runner, prof.runtime, prof.format) == \
        ("local", "local", "python", "onnxruntime", "onnx")
    assert prof.threads >= 1 and isinstance(prof.protocol, Protocol)
    assert prof.protocol.rounds >= 2, "ops are measured over several rounds"


def test_a_minimal_profile_gets_the_defaults(tmp_path):
    prof = parse_profile(write(tmp_path, "transport: local\n"))
    assert prof.name == "board" and prof.runner == "python" and prof.threads == 1
    assert prof.protocol == Protocol()
    assert prof.source == str(tmp_path / "board.yaml")


def test_unknown_field_suggests_the_close_one(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthread: 2\n"))
    assert "'thread'" in err.message and "not a profile field" in err.message
    assert "did you mean 'threads'?" in err.hint


def test_wrong_type_names_the_field_and_the_type(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthreads: two\n"))
    assert "'threads'" in err.message and "an integer" in err.message and "'two'" in err.message
    assert "threads:" in err.hint


def test_a_boolean_is_not_a_number(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthreads: true\n"))
    assert "'threads'" in err.message


def test_threads_must_be_positive(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthreads: 0\n"))
    assert "'threads'" in err.message and ">= 1" in err.message


@pytest.mark.parametrize("field, value, suggestion", [
    ("transport", "sshh", "ssh"), ("runtime", "onnxruntim", "onnxruntime"), ("runner", "pythn", "python"),
])
def test_bad_choice_suggests_the_close_one(tmp_path, field, value, suggestion):
    text = "transport: local\n" if field != "transport" else ""
    err = error_of(write(tmp_path, text + f"{field}: {value}\n"))
    assert f"'{field}'" in err.message and value in err.message
    assert f"did you mean '{suggestion}'?" in err.hint


@pytest.mark.parametrize("protocol, words", [
    ("{runs: 0}", ["setting 'runs' must be an int >= 1", "Got 0"]),
    ("{warmup_s: -1}", ["'warmup_s'", ">= 0"]),
    ("{runs: 10, max_runs: 5}", ["'max_runs'", ">= runs"]),
    ("{rounds: 1.5}", ["'rounds'", "an int"]),
    ("{warmups: 3}", ["unknown setting", "warmups"]),
    ("{rouns: 5}", ["unknown setting 'rouns'"]),
])
def test_bad_protocol_values_name_the_setting(tmp_path, protocol, words):
    err = error_of(write(tmp_path, f"transport: local\nprotocol: {protocol}\n"))
    assert "'protocol'" in err.message
    for word in words:
        assert word in err.message
    assert "Protocol" not in err.message and "__init__" not in err.message
    if protocol == "{warmups: 3}":
        assert "did you mean 'warmup_s'?" in err.hint or "did you mean 'warmup_runs'?" in err.hint
    if protocol == "{rouns: 5}":
        assert "did you mean 'rounds'?" in err.hint


def test_ssh_without_host_says_to_add_it(tmp_path):
    err = error_of(write(tmp_path, "transport: ssh\nconnection: {user: pi}\n"))
    assert "'connection'" in err.message and "'host'" in err.message and "ssh" in err.message
    assert "host" in err.hint


def test_unknown_connection_setting_suggests_the_close_one(tmp_path):
    err = error_of(write(tmp_path, "transport: ssh\nconnection: {hots: board.local}\n"))
    assert "'hots'" in err.message
    assert "did you mean 'host'?" in err.hint


def test_runtime_options_the_python_runner_does_not_know_are_refused_when_the_profile_loads(tmp_path):
    lite = "transport: local\nruntime: litert\nformat: tflite\n"
    err = error_of(write(tmp_path, lite + "runtime_options: {xnnpak: true}\n"))
    assert "'xnnpak'" in err.message and "did you mean 'xnnpack'?" in err.hint
    err = error_of(write(tmp_path, lite + "runtime_options: {xnnpack: yes please}\n"))
    assert "setting 'xnnpack' must be true or false" in err.message
    err = error_of(write(tmp_path, "transport: local\nruntime_options: {xnnpack: false}\n"))
    assert "which the python runner's onnxruntime does not know" in err.message and "spinning" in err.hint
    assert parse_profile(write(tmp_path, lite + "runtime_options: {xnnpack: false}\n")).runtime_options


def test_a_max_time_below_the_min_time_is_refused(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nprotocol: {min_time_s: 0.05, max_time_s: 0.01, rel_ci: 0.01}\n"))
    assert "setting 'max_time_s' must be > min_time_s (0.05)" in err.message


def test_wrong_connection_type_is_refused(tmp_path):
    err = error_of(write(tmp_path, "transport: ssh\nconnection: {host: b, port: '22'}\n"))
    assert "'port'" in err.message and "an integer" in err.message


def test_missing_transport_is_refused(tmp_path):
    err = error_of(write(tmp_path, "runtime: onnxruntime\n"))
    assert "'transport'" in err.message and "missing" in err.message


def test_name_must_match_the_file(tmp_path):
    err = error_of(write(tmp_path, "name: other\ntransport: local\n"))
    assert "'name'" in err.message and "board.yaml" in err.message


def test_format_and_runtime_must_agree(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nformat: tflite\n"))
    assert "'format'" in err.message and "litert" in err.hint


def test_unknown_thermal_setting_is_refused(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthermal: {max_temp: 70}\n"))
    assert "'thermal'" in err.message and "max_temp" in err.message and "max_temp_c" in err.hint


def test_invalid_yaml_names_the_line(tmp_path):
    err = error_of(write(tmp_path, "transport: local\nthreads: [1,\nrunner: python\n"))
    assert "not valid YAML" in err.message and "line" in err.message


def test_a_list_is_not_a_profile(tmp_path):
    err = error_of(write(tmp_path, "- transport: local\n"))
    assert "mapping" in err.message


def test_settings_change_with_what_a_number_means_only():
    base = DeviceProfile(name="d", transport="local")
    tag = "onnx17-torch2-r1"
    h = DeviceProfile.settings_hash
    same = dataclasses.replace(base, protocol=Protocol(rounds=9, batch_size=3), description="x")
    assert h(same.settings(tag)) == h(base.settings(tag))
    for changed in (dataclasses.replace(base, threads=2),
                    dataclasses.replace(base, protocol=Protocol(runs=31)),
                    dataclasses.replace(base, runtime_options={"spinning": False})):
        assert h(changed.settings(tag)) != h(base.settings(tag))
    assert h(base.settings("other-exporter")) != h(base.settings(tag))


def test_pinned_cores_are_part_of_what_a_number_means():
    base = DeviceProfile(name="d", transport="adb")
    tag = "tflite-r1"
    big = dataclasses.replace(base, connection={"cpu_mask": "f0"})
    little = dataclasses.replace(base, connection={"cpu_mask": "0f"})
    same_big = dataclasses.replace(base, connection={"cpu_mask": "F0", "address": "10.0.0.7:5555"})
    h = DeviceProfile.settings_hash
    assert big.cpus == [4, 5, 6, 7] and little.cpus == [0, 1, 2, 3] and base.cpus is None
    assert len({h(p.settings(tag)) for p in (base, big, little)}) == 3
    assert h(same_big.settings(tag)) == h(big.settings(tag))  # how it is written, or reached, is not
    assert "cpu_mask" not in base.settings(tag)  # unpinned profiles keep the hash they had


@pytest.mark.parametrize("mask", ["zz", "0", "0xf0", ""])
def test_a_bad_cpu_mask_is_refused_for_every_transport(tmp_path, mask):
    err = error_of(write(tmp_path, f"name: board\ntransport: local\nconnection: {{cpu_mask: '{mask}'}}\n"))
    assert "cpu_mask" in err.message and "hex mask" in err.message and "f0" in err.hint


# ---- lookup: ./device_profiles > $LATBENCH_HOME/devices > bundled -------------------------

def profile_text(name: str, description: str) -> str:
    return yaml.safe_dump({"name": name, "transport": "local", "description": description})


def test_lookup_order_project_then_home_then_bundled(latbench_home, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "device_profiles").mkdir(parents=True)
    monkeypatch.chdir(project)
    user = latbench_home / "devices"
    user.mkdir()

    assert find_profile("local") == BUNDLED / "local.yaml"

    (user / "local.yaml").write_text(profile_text("local", "from home"))
    assert load_profile("local").description == "from home"

    (project / "device_profiles" / "local.yaml").write_text(profile_text("local", "from project"))
    assert load_profile("local").description == "from project"
    assert find_profile("local") == project / "device_profiles" / "local.yaml"

    (user / "board.yaml").write_text(profile_text("board", "only in home"))
    known = list_profiles()
    assert known["board"] == user / "board.yaml"
    assert known["local"] == project / "device_profiles" / "local.yaml"


def test_unknown_device_suggests_a_close_name_and_lists_the_known(latbench_home):
    with pytest.raises(UsageError) as info:
        find_profile("locl")
    err = info.value
    assert err.message == "unknown device 'locl'"
    assert "did you mean 'local'?" in err.hint and "known devices:" in err.hint
    assert err.exit_code == 2


@pytest.mark.parametrize("text, field, setting", [
    ("retry: {attempts: 0}", "'retry'", "'attempts'"),
    ("retry: {backoff_s: -1}", "'retry'", "'backoff_s'"),
    ("thermal: {poll_s: -5}", "'thermal'", "'poll_s'"),
    ("timeout_s: 0", "'timeout_s'", "> 0"),
    # non-finite numbers: NaN passes every `< low` check, and `timeout_s: .inf` ("no limit")
    # reached collect as an internal OverflowError
    ("timeout_s: .inf", "'timeout_s'", "> 0"),
    ("timeout_s: .nan", "'timeout_s'", "> 0"),
    ("retry: {backoff_s: .nan}", "'retry'", "finite"),
    ("thermal: {poll_s: .nan}", "'thermal'", "finite"),
    ("protocol: {warmup_s: .inf}", "'protocol'", "'warmup_s'"),
    ("protocol: {rel_ci: .nan}", "'protocol'", "'rel_ci'"),
    ("retry: {attempts: 2.5}", "'retry'", "must be an integer"),
    ("connection: {connect_timeout_s: -1}", "'connection'", "'connect_timeout_s'"),
])
def test_settings_that_would_break_a_collection_are_refused(tmp_path, text, field, setting):
    """0 retry attempts left collect with no attempt at all (a crash); negative waits crash sleep."""
    err = error_of(write(tmp_path, f"transport: local\n{text}\n"))
    assert field in err.message and setting in err.message


@pytest.mark.parametrize("runner", ["onnxruntime_perf_test", "benchmark_model", "trtexec"])
def test_a_tool_runner_does_not_claim_the_python_runners_stop_rule(runner):
    from latbench.protocol import describe_timing

    timing = Protocol(rel_ci=0.02, max_time_s=1.0).timing()
    assert "within +-2%" in describe_timing(timing) and "within +-2%" in describe_timing(timing, "python")
    words = describe_timing(timing, runner)
    assert "within" not in words and f"not applied (the {runner} runner" in words
    # a run cap only where the runner keeps at most max_runs (benchmark_model has none)
    assert ("(max 5000)" in words) == (runner != "benchmark_model") and "(max 5000)" in describe_timing(timing)


def test_ssh_port_must_be_a_port_number(tmp_path):
    err = error_of(write(tmp_path, "transport: ssh\nconnection: {host: board, port: 99999}\n"))
    assert "'port'" in err.message and "1 to 65535" in err.message


def test_a_profile_that_is_not_utf8_is_one_clear_error(tmp_path):
    """A Latin-1 byte (a "°C" in a comment) made `latbench devices` an internal error."""
    path = tmp_path / "board.yaml"
    path.write_bytes(b"transport: local\ndescription: caf\xe9\n")
    err = error_of(path)
    assert "not UTF-8" in err.message and "byte 33" in err.message


@pytest.mark.parametrize("text, words", [
    ("runner: benchmark_model\nruntime: onnxruntime\n", "runs runtime litert"),
    ("runner: trtexec\nruntime: tensorrt\nruntime_options: {metric: wall}\n", "metric"),
])
def test_a_runner_that_cannot_serve_the_profile_refuses_it_when_it_loads(tmp_path, text, words):
    """It was refused only when a runner was made, so `latbench devices` called it valid and
    doctor --json printed nothing."""
    err = error_of(write(tmp_path, f"transport: local\n{text}"))
    assert words in err.message


def test_a_project_profiles_folder_does_not_hide_the_bundled_ones(tmp_path):
    """Under `python -m latbench` in a folder with its own ./device_profiles (no __init__.py),
    that folder was imported as the bundled `device_profiles` package: every command that
    looked up a profile was an internal error."""
    from conftest import run_cli

    (tmp_path / "device_profiles").mkdir()
    write(tmp_path / "device_profiles", "transport: local\n", name="mine")
    res = run_cli("devices", "--json", env_home=tmp_path / "home", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    names = {row["name"]: row["path"] for row in json.loads(res.stdout)}
    assert names["mine"] == str(tmp_path / "device_profiles" / "mine.yaml")
    assert names["local"] == str(BUNDLED / "local.yaml")
