"""The `latbench` command line: help with examples, listings, tables that match the store, and
errors a user can cause as one line with an exit code, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latbench import home
from latbench.cli.main import COMMANDS, main
from latbench.store import Store


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args) -> (exit code, stdout, stderr) of latbench.cli.main.main in this process."""
    monkeypatch.setattr(sys, "argv", ["latbench"])

    def call(*args: str):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return call


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("latbench: error:")
    return lines[0]


# ---- help -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_each_command_shows_an_example(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "example" in out.lower()
    assert f"latbench {command} " in out  # an example invocation of this very command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_description_keeps_the_case_of_the_command_list(cli, command):
    # str.capitalize() lowercases the rest: `farm --help` said "a device farm on ray"
    _, out, _ = cli(command, "--help")
    help_text = COMMANDS[command][1]
    assert help_text[0].upper() + help_text[1:] + "." in " ".join(out.split())


def test_top_level_help_lists_the_commands_with_an_example(cli):
    code, out, _ = cli("--help")
    assert code == 0
    assert all(name in out for name in COMMANDS)
    assert "Example: latbench collect --device local" in out


def test_no_command_prints_help_and_exits_2(cli):
    code, out, _ = cli()
    assert code == 2 and "COMMAND" in out


def test_a_bad_argument_is_a_usage_error_on_one_line(cli):
    code, _, err = cli("collect", "--device", "local", "--limit", "0")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--limit" in lines[0] and "must be >= 1" in lines[0]
    code, _, err = cli("farm", "agent", "--port", "70000")
    assert code == 2 and "argument --port: a port is 1..65535, got 70000" in err
    code, _, err = cli("collect", "--device", "local", "--rounds", "abc")
    assert code == 2 and "argument --rounds: not a whole number: 'abc'" in err  # not "invalid _positive value"


# ---- devices ----------------------------------------------------------------------------

def test_devices_lists_the_bundled_local_profile(latbench_cli):
    res = latbench_cli("devices")
    assert res.returncode == 0, res.stderr
    assert "local" in res.stdout and "onnxruntime" in res.stdout


def test_devices_json_lists_profiles_with_their_files_and_errors(cli, fast_profile, latbench_home):
    (latbench_home / "devices" / "broken.yaml").write_text("transport: local\nthread: 2\n")
    code, out, _ = cli("devices", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["local"]["transport"] == "local" and rows["local"]["path"].endswith("device_profiles/local.yaml")
    assert rows[fast_profile]["path"] == str(latbench_home / "devices" / f"{fast_profile}.yaml")
    assert rows[fast_profile]["error"] is None
    assert "did you mean 'threads'" in rows["broken"]["error"]


def test_devices_show_prints_the_profile_file(cli, latbench_home):
    code, out, err = cli("devices", "--show", "local")
    assert code == 0 and "transport: local" in out and "invalid" not in err
    (latbench_home / "devices").mkdir()
    (latbench_home / "devices" / "broken.yaml").write_text("transport: local\nthread: 2\n")
    code, out, err = cli("devices", "--show", "broken")
    assert code == 0 and "thread: 2" in out  # shown, to be fixed
    assert "invalid" in err and "did you mean 'threads'" in err


# ---- lut --------------------------------------------------------------------------------

@pytest.fixture
def collected(warm_home, fast_profile, cli):
    """Three ops of fbnet-cifar measured on the fast profile (2 rounds)."""
    code, _, err = cli("collect", "--device", fast_profile, "--limit", "3")
    assert code == 0, err
    with Store(home.db_path()) as store:
        info = store.latest_context(fast_profile)
        return info, store.table(info.context)


def stored_columns(rows: list[dict]) -> list[dict]:
    """lut rows less what lut adds to the store's table (rel_iqr, noisy)."""
    return [{k: v for k, v in r.items() if k not in ("rel_iqr", "noisy")} for r in rows]


def test_lut_shows_each_keys_noise_from_its_raw_samples(cli, collected, fast_profile):
    """rel_iqr: the median over rounds of IQR / median of each round's raw samples; noisy: > 10%."""
    import numpy as np

    info, _ = collected
    code, out, _ = cli("lut", "--device", fast_profile, "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    with Store(home.db_path()) as store:
        for row in rows:
            ratios = []
            for rnd in range(row["rounds"]):
                x = store.samples(info.context, row["key"], rnd)
                q1, med, q3 = np.percentile(x, [25, 50, 75])
                ratios.append((q3 - q1) / med)
            assert row["rel_iqr"] == pytest.approx(float(np.median(ratios)), rel=1e-12)
            assert row["noisy"] is (row["rel_iqr"] > 0.10)
    code, out, _ = cli("lut", "--device", fast_profile)
    assert code == 0 and "rel_iqr%" in out and "round_spread%" in out and "noisy" in out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    shown = {c[0]: c for c in cells}  # the terminal shows percents, as `collect` does; JSON fractions
    for row in rows:
        assert f"{100 * row['rel_iqr']:.1f}" in shown[row["key"]]


def test_lut_csv_rows_say_where_they_came_from(cli, collected, fast_profile):
    info, _ = collected
    code, out, _ = cli("lut", "--device", fast_profile, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and all(r["device"] == fast_profile and r["table"] == info.context.table_id
                        and r["runtime"] == info.context.runtime_label and r["threads"] == "1"
                        and r["rel_iqr"] and r["noisy"] in ("True", "False") for r in rows)


def test_lut_csv_matches_the_store(cli, collected, fast_profile):
    _, table = collected
    code, out, _ = cli("lut", "--device", fast_profile, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(table) == 3
    for got, want in zip(rows, table):
        assert got["key"] == want["key"] and got["kind"] == "op"
        assert float(got["median_ms"]) == want["median_ms"]
        assert float(got["p10_ms"]) == want["p10_ms"] and float(got["p90_ms"]) == want["p90_ms"]
        assert int(got["rounds"]) == 2 and int(got["count"]) == want["count"]


def test_lut_json_matches_the_store_and_names_its_context(cli, collected, fast_profile, tmp_path):
    info, table = collected
    out_file = tmp_path / "lut.json"
    code, out, err = cli("lut", "--device", fast_profile, "--json", "--out", str(out_file))
    assert code == 0 and out == "" and "wrote 3 rows" in err
    data = json.loads(out_file.read_text())
    assert stored_columns(data["rows"]) == table
    assert data["device"] == fast_profile
    assert data["runtime_version"] == info.context.runtime_version
    assert data["settings_hash"] == info.context.settings_hash and data["table"] == info.context.table_id
    assert data["settings"]["protocol"]["runs"] == 5 and data["settings"]["threads"] == 1


def test_lut_table_names_runtime_threads_and_protocol(cli, collected, fast_profile):
    info, _ = collected
    code, out, _ = cli("lut", "--device", fast_profile)
    assert code == 0
    header = " ".join(out.split())
    assert f"{fast_profile}: table {info.context.table_id}, onnxruntime " in header
    assert "1 thread(s), warm-up >= 2 runs and" in header and "timed >= 5 runs and" in header
    assert "3 keys" in header


def test_lut_out_without_a_format_writes_the_file_by_its_name(cli, collected, fast_profile, tmp_path):
    _, table = collected
    code, out, err = cli("lut", "--device", fast_profile, "--out", str(tmp_path / "t.csv"))
    assert code == 0 and out == "" and "wrote 3 rows" in err
    assert [r["key"] for r in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))] == \
        [r["key"] for r in table]
    code, _, _ = cli("lut", "--device", fast_profile, "--out", str(tmp_path / "t.json"))
    assert code == 0 and stored_columns(json.loads((tmp_path / "t.json").read_text())["rows"]) == table


def test_lut_kind_filters_rows(cli, collected, fast_profile):
    code, out, err = cli("lut", "--device", fast_profile, "--json", "--kind", "network")
    assert code == 0 and json.loads(out)["rows"] == []
    assert f"latbench collect --device {fast_profile} --networks 20" in err


def test_lut_reads_the_table_of_the_profiles_current_settings(cli, collected, fast_profile, latbench_home):
    from conftest import write_profile

    info, table = collected
    write_profile(latbench_home, fast_profile, threads=2)
    code, _, err = cli("collect", "--device", fast_profile, "--limit", "1", "--rounds", "1")
    assert code == 0, err
    code, out, err = cli("lut", "--device", fast_profile, "--json")
    assert code == 0 and json.loads(out)["settings"]["threads"] == 2  # the newest: also the current
    assert len(json.loads(out)["rows"]) == 1
    assert "the newest measured with the profile's current settings of the 2 tables" in " ".join(err.split())
    write_profile(latbench_home, fast_profile)  # back to 1 thread: its 3 keys, not the newest 1
    code, out, err = cli("lut", "--device", fast_profile, "--json")
    assert code == 0 and json.loads(out)["table"] == info.context.table_id
    assert stored_columns(json.loads(out)["rows"]) == table
    write_profile(latbench_home, fast_profile, threads=4)  # never measured: the newest
    code, out, err = cli("lut", "--device", fast_profile, "--json")
    assert json.loads(out)["settings"]["threads"] == 2 and "no table of" in err and "is the newest of 2" in " ".join(err.split())
    assert "(threads: 2 then, 4 now)" in err  # what differs


def test_lut_of_a_device_never_measured_is_one_line(cli, collected):
    code, _, err = cli("lut", "--device", "local")
    assert code == 1
    line = one_line(err)
    assert "no measurements for device 'local'" in line and "latbench collect --device local" in line
    assert "test-local" in line  # names the devices that were measured


def test_lut_of_a_name_with_no_profile_and_no_measurements_is_a_usage_error(cli, collected):
    code, _, err = cli("lut", "--device", "test-locall")
    assert code == 2
    line = one_line(err)
    assert "no device profile named 'test-locall'" in line and "did you mean 'test-local'?" in line


def test_lut_out_in_a_missing_folder_is_one_line(cli, collected, fast_profile, tmp_path):
    code, _, err = cli("lut", "--device", fast_profile, "--csv", "--out", str(tmp_path / "no" / "lut.csv"))
    assert code == 2 and "cannot write" in one_line(err)


def test_lut_with_no_database_is_one_line(latbench_cli):
    res = latbench_cli("lut", "--device", "local")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "no measurements yet" in line and "latbench collect --device local" in line


# ---- errors a user can cause, from a real `latbench` process ---------------------------

def test_unknown_device_is_one_line_with_a_suggestion_and_exit_2(latbench_cli):
    res = latbench_cli("collect", "--device", "locl")
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "unknown device 'locl'" in line and "did you mean 'local'?" in line
    assert res.stdout == ""


def test_unknown_space_is_one_line_and_exit_2(latbench_cli):
    res = latbench_cli("collect", "--device", "local", "--space", "fbnet-cifr")
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "unknown search space 'fbnet-cifr'" in line and "did you mean 'fbnet-cifar'?" in line


def test_an_invalid_profile_is_one_line_naming_the_file(latbench_cli, latbench_home):
    path = latbench_home / "devices" / "broken.yaml"
    path.parent.mkdir()
    path.write_text("transport: local\nprotocol: {runs: 0}\n")
    res = latbench_cli("collect", "--device", "broken")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert str(path) in line and "'runs'" in line


def test_an_unwritable_home_is_one_line_and_exit_1(latbench_cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = latbench_cli("collect", "--device", "local", env_home=blocker / "home")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "cannot write to latbench home" in line and "LATBENCH_HOME" in line
    assert blocker.read_text() == "not a directory"


def test_a_model_cache_that_cannot_be_written_is_one_line_before_anything_is_exported(latbench_cli, tmp_path):
    """A models/ folder made by sudo (here: a file in its place) was an internal error."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").write_text("not a directory")
    res = latbench_cli("collect", "--device", "local", "--limit", "1", env_home=home)
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"cannot write to the model cache {home / 'models'}" in line and "internal error" not in line


def test_two_processes_checking_the_home_at_once_do_not_fail_each_other(tmp_path):
    """The write probe had one fixed name: one process removed the other's, which then failed
    "cannot write to latbench home ... No such file or directory" (two collects started at once)."""
    script = ("from latbench import home\nfrom latbench.errors import LatbenchError\nfails = 0\n"
              "for _ in range(2000):\n    try:\n        home.writable_home()\n"
              "    except LatbenchError:\n        fails += 1\nprint(fails)\n")
    env = dict(os.environ, LATBENCH_HOME=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    assert [int(p.communicate(timeout=120)[0]) for p in procs] == [0, 0]


def test_a_corrupt_database_is_one_line_and_exit_1(latbench_cli, latbench_home):
    db = latbench_home / "latbench.db"
    db.write_bytes(b"\x00garbage, not sqlite\xff" * 300)
    res = latbench_cli("lut", "--device", "local")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "corrupt" in line and str(db) in line and "move it aside" in line
    assert db.read_bytes().startswith(b"\x00garbage"), "the file must be left for the user"


def test_collect_into_a_corrupt_database_is_one_line_and_exit_1(cli, fast_profile, latbench_home):
    (latbench_home / "latbench.db").write_bytes(b"\x00garbage, not sqlite\xff" * 300)
    code, out, err = cli("collect", "--device", fast_profile, "--limit", "1")
    assert code == 1 and out == ""
    assert "corrupt" in one_line(err)


def test_stdout_to_stderr_moves_even_what_c_code_writes(capfd):
    import os

    from latbench.cli import output

    with output.stdout_to_stderr():
        os.write(1, b"c-level text\n")  # as Ray's core does
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and "c-level text" in err


# ---- errors ------------------------------------------------------------------------------

def test_a_missing_dependency_is_named_with_its_fix_and_a_bug_is_still_a_bug(capsys):
    from latbench.cli import exit_codes
    from latbench.cli.main import guarded

    def needs(module: str):
        def call():
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return call

    assert guarded("latbench", needs("yaml"), debug=False, cancelled="") == exit_codes.ERROR
    line = one_line(capsys.readouterr().err)
    assert "latbench needs PyYAML" in line and "no module 'yaml'" in line and "pip install -e ." in line
    # a module of latbench itself is missing: that is a bug, and said as one
    assert guarded("latbench", needs("latbench.nope"), debug=False, cancelled="") == exit_codes.ERROR
    assert "internal error: ModuleNotFoundError" in capsys.readouterr().err


def test_progress_without_a_terminal_prints_plain_lines_at_most_so_often_and_at_the_end(capsys, monkeypatch):
    """Under `| tee` or in CI, rich's live bars drew nothing until they stopped: a collection
    said nothing for minutes. Now a line per task every PLAIN_EVERY_S, and one when it is done."""
    from types import SimpleNamespace

    from latbench.cli import output

    clock = [100.0]
    monkeypatch.setattr(output, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with output.progress() as bar:
        task = bar.add_task("measuring", total=20)
        bar.update(task, completed=1)  # too soon for a line
        clock[0] += output.Bars.PLAIN_EVERY_S
        bar.update(task, completed=5)
        bar.update(task, completed=6)  # too soon again
        clock[0] += 3
        bar.update(task, completed=20)
        bar.update(task, completed=20)  # said once
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"measuring: 5/20 ({output.Bars.PLAIN_EVERY_S:.0f} s)",
                     f"measuring: 20/20 ({output.Bars.PLAIN_EVERY_S + 3:.0f} s)"]


def test_plain_progress_follows_advance_new_stages_and_removed_tasks(capsys):
    """nas advances its epoch bar and renames it per epoch; fit-predictor renames one task per
    step and starts each at 0/1 again. Both printed nothing but the first line in CI."""
    from latbench.cli import output

    with output.progress() as bar:
        search = bar.add_task("search (2 epochs)", total=2)
        first = bar.add_task("  weights", total=3)
        bar.update(first, completed=3)
        bar.remove_task(first)
        second = bar.add_task("  weights", total=3)  # a fresh id: the removed one is not reused
        assert second != first and second != search
        bar.update(search, advance=1, description="search: epoch 1/2")
        bar.update(search, advance=1, description="search: epoch 2/2")
        bar.section("score ...")
        step = bar.add_task("cross-validating", total=1)
        bar.update(step, completed=1)
        bar.update(step, description="fitting the final predictor", completed=0, total=1)
        bar.update(step, completed=1)
    lines = [line.rsplit(" (", 1)[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["  weights: 3/3", "search: epoch 1/2: 1/2", "search: epoch 2/2: 2/2", "score ...",
                     "cross-validating: 1/1", "fitting the final predictor: 0/1", "fitting the final predictor: 1/1"]


def test_json_output_has_no_nan_or_infinity_that_jq_refuses():
    """An unknown IQR (a runner that printed no spread) is NaN and a 0 ms median's ratio is inf;
    json.dumps wrote them as NaN and Infinity, which jq and JSON.parse refuse."""
    import numpy as np

    from latbench.cli import output

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))

    data = {"rel_iqr": float("nan"), "rows": [{"ratio": float("inf")}, (np.float32("nan"), 1.5)],
            "p90": np.float64(2.25), "samples": np.array([1.0, np.nan]), "count": 3, "path": Path("/x")}
    assert strict(output.json_text(data)) == {"rel_iqr": None, "rows": [{"ratio": None}, [None, 1.5]],
                                               "p90": 2.25, "samples": [1.0, None], "count": 3, "path": "/x"}
