"""`latbench import`: the CSV schema and the two shared formats, into a real SQLite store."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from latbench import importers
from latbench.errors import UsageError
from latbench.ops import Network, OpSpec
from latbench.spaces import get_space
from latbench.store import Store

BLOCKS = SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv"
NETWORKS = SHARED_DATA / "fbnet-help" / "networks.csv"


@pytest.fixture(scope="module", autouse=True)
def shared_data():
    if not (BLOCKS.exists() and NETWORKS.exists()):
        pytest.skip(f"shared data missing under {SHARED_DATA}")


def test_hwnasbench_rows_map_onto_the_fbnet_spaces():
    result = importers.read(BLOCKS, source_device="raspi4")
    assert result.format == "hwnasbench" and result.source == "hwnasbench-raspi4"
    with BLOCKS.open() as f:
        raw = [r for r in csv.DictReader(f) if r["device"] == "raspi4"]
    assert len(result.rows) == len(raw)
    specs = [OpSpec.from_key(r["key"]) for r in result.rows]
    space_ops = {op.key for name in ("fbnet-cifar", "fbnet-imagenet") for op in get_space(name).ops()}
    fc_10 = [s for s in specs if s.kind == "fc" and s.cout == 10]  # a CIFAR-10 classifier, in no space
    assert {s.key for s in specs} - {s.key for s in fc_10} == space_ops
    for spec, row, out in zip(specs, raw, result.rows):
        assert out["median_ms"] == float(row["latency_ms"]) and out["kind"] == "op"
        assert spec.kind == row["op"] and spec.cin == int(row["cin"]) and spec.cout == int(row["cout"])
        if row["op"] == "fbnet_block":
            assert spec.groups == int(row["groups"]) and spec.expansion == int(row["expansion"])
        if row["op"] == "skip":
            assert spec.activation == "none" and spec.kernel == 1
            assert spec.is_identity == (row["cin"] == row["cout"] and row["stride"] == "1")
        if row["op"] == "avgpool":
            assert spec.kernel == spec.h == int(row["h"])
        if row["op"] == "fc":
            assert (spec.h, spec.w) == (1, 1) and row["h"] == ""
    assert sum(1 for s in specs if s.kind == "fbnet_block" and s.groups == 2) == 48


def test_hwnasbench_needs_a_source_device_when_the_file_has_several():
    with pytest.raises(UsageError, match="holds 4 devices: edgegpu, eyeriss, fpga, raspi4") as info:
        importers.read(BLOCKS)
    assert "--source-device NAME (such as --source-device edgegpu)" in str(info.value)
    with pytest.raises(UsageError, match="no rows of device 'pixel9'"):
        importers.read(BLOCKS, source_device="pixel9")
    with pytest.raises(UsageError, match="did you mean 'raspi4'"):
        importers.read(BLOCKS, source_device="raspi")


def test_help_column_becomes_whole_networks_of_fbnet_cifar():
    result = importers.read(NETWORKS, column="pixel2")
    assert "summed" not in result.details  # a phone's measured networks, unlike HELP's raspi4 column
    assert importers.read(NETWORKS, column="fpga").details["summed"]
    assert "batch" not in result.details and "batch" not in importers.read(NETWORKS, column="titanx_1").details
    assert importers.read(NETWORKS, column="titanx_32").details["batch"] == 32  # 32 images, not one
    assert result.format == "help" and len(result.rows) == 5000 and result.networks == 5000
    with NETWORKS.open() as f:
        first = next(csv.DictReader(f))
    space, arch = Network.parse_key(result.rows[0]["key"])
    assert space == "fbnet-cifar" and list(arch) == [int(a) for a in first["arch"].split()]
    assert result.rows[0]["median_ms"] == float(first["pixel2"])
    with pytest.raises(UsageError, match="--column") as info:
        importers.read(NETWORKS)
    assert "pixel2" in str(info.value)
    with pytest.raises(UsageError, match="no column 'pixel3'"):
        importers.read(NETWORKS, column="pixel3")
    with pytest.raises(UsageError, match="did you mean 'pixel2'"):
        importers.read(NETWORKS, column="pixl2")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_latbench_csv_schema(tmp_path):
    space = get_space("fbnet-cifar")
    op = space.candidate_op(3, 2)
    net = space.network([1] * 22)
    path = _write(tmp_path / "phone.csv", (
        "key,kind,cin,h,w,cout,kernel,stride,expansion,groups,space,arch,median_ms,p10_ms,count\n"
        f"{op.key},,,,,,,,,,,,0.5,0.45,30\n"
        f"{op.key},,,,,,,,,,,,0.7,,\n"
        ",skip,16,32,32,24,,,,,,,0.2,,\n"
        ",fbnet_block,16,32,32,24,5,1,3,,,,1.5,,\n"
        f",,,,,,,,,,fbnet-cifar,{' '.join('1' * 22)},9.5,,\n"
        f"{net.key},,,,,,,,,,,,9.7,,\n"))
    result = importers.read(path)
    assert result.format == "csv" and result.ops == 4 and result.networks == 2
    rows = result.rows
    assert (rows[0]["round"], rows[1]["round"]) == (0, 1)  # a repeated key is another round
    assert rows[0]["p10_ms"] == 0.45 and rows[0]["count"] == 30
    assert rows[2]["key"] == OpSpec("skip", 16, 32, 32, 24, activation="none").key
    assert rows[3]["key"] == OpSpec("fbnet_block", 16, 32, 32, 24, kernel=5, expansion=3).key
    assert rows[4]["key"] == rows[5]["key"] == net.key
    assert (rows[4]["round"], rows[5]["round"]) == (0, 1)


@pytest.mark.parametrize("line, match", [
    (",conv,16,32,32,24,1.0", "line 2: kind must be one of"),
    (",fbnet_block,16,32,32,24,fast", "line 2: median_ms must be a number"),
    (",fbnet_block,16,32,32,24,-1", "line 2: median_ms must be a finite number >= 0"),
    (",fbnet_block,16,0,32,24,1.0", "line 2: h must be a whole number >= 1"),
    (",fbnet_block,16,32,32", "line 2: no cout cell"),
])
def test_a_bad_row_stops_the_import_with_its_line(tmp_path, line, match):
    path = _write(tmp_path / "bad.csv", "key,kind,cin,h,w,cout,median_ms\n" + line + "\n")
    with pytest.raises(importers.ImportFormatError, match=match):
        importers.read(path)


def test_spread_columns_must_bracket_the_median(tmp_path):
    path = _write(tmp_path / "p.csv", "key,median_ms,p10_ms,p90_ms\n"
                  f"{OpSpec('fbnet_block', 16, 32, 32, 24).key},0.5,0.9,0.1\n")
    with pytest.raises(importers.ImportFormatError, match="line 2: p10_ms <= median_ms <= p90_ms"):
        importers.read(path)


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfekey,median_ms\n")
    with pytest.raises(importers.ImportFormatError, match="not UTF-8 text") as err:
        importers.read(path)
    assert "UTF-8 CSV" in err.value.hint
    assert "byte 0xff on line 1" in str(err.value)


def test_a_bad_byte_is_named_by_its_line_after_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfkey,median_ms\nop:a,1\nop:\xe9,2\n")
    with pytest.raises(importers.ImportFormatError, match="byte 0xe9 on line 3"):
        importers.read(path)


def test_a_bad_row_is_named_by_its_line_in_the_file_past_blank_lines(tmp_path):
    path = _write(tmp_path / "gaps.csv", "kind,cin,h,w,cout,median_ms\n\n\nfbnet_block,16,32,32,24,1\n"
                                         "fbnet_block,16,0,32,24,1\n")
    with pytest.raises(importers.ImportFormatError, match="line 5: h must be a whole number"):
        importers.read(path)


@pytest.mark.parametrize("cells, match", [
    ("fbnet_block,inf,32,32,24,1,", "line 2: cin must be a whole number of at most"),
    ("fbnet_block,1e400,32,32,24,1,", "line 2: cin must be a whole number of at most"),
    ("fbnet_block,16,32,32,24,1,1e30", "line 2: round must be a whole number of at most"),
])
def test_a_number_too_large_for_a_whole_number_is_a_bad_row(tmp_path, cells, match):
    path = _write(tmp_path / "big.csv", f"kind,cin,h,w,cout,median_ms,round\n{cells}\n")
    with pytest.raises(importers.ImportFormatError, match=match):  # was OverflowError, or SQLite's
        importers.read(path)


def test_a_negative_candidate_index_is_a_bad_row_not_another_network(tmp_path):
    arch = ",".join(["0", "-1"] + ["0"] * 20)
    path = _write(tmp_path / "nets.csv", f'space,arch,median_ms\nfbnet-cifar,"{arch}",1.0\n')
    with pytest.raises(importers.ImportFormatError, match="line 2: .*position 1 \\(from 0\\) is '-1'"):
        importers.read(path)  # the '-' was read as a separator: stored as 0-1-0-...


def test_a_repeated_row_of_the_shared_formats_stops_the_import(tmp_path):
    with BLOCKS.open() as f:
        lines = f.read().splitlines()
    first = next(line for line in lines if line.startswith("raspi4,fbnet_block"))
    again = first.rsplit(",", 1)[0] + ",777"
    blocks = _write(tmp_path / "blocks.csv", "\n".join([lines[0], first, again]) + "\n")
    with pytest.raises(importers.ImportFormatError, match="line 3: .* is already on line 2"):
        importers.read(blocks, source_device="raspi4")
    with NETWORKS.open() as f:
        head, row = f.readline().strip(), f.readline().strip()
    nets = _write(tmp_path / "networks.csv", "\n".join([head, row, row]) + "\n")
    with pytest.raises(importers.ImportFormatError, match="line 3: net:fbnet-cifar:.* is already on line 2"):
        importers.read(nets, column="pixel2")


def test_a_wrong_format_says_which_the_header_reads_as():
    with pytest.raises(importers.ImportFormatError, match="not a HELP network table") as err:
        importers.read(BLOCKS, "help")
    assert "--format hwnasbench" in err.value.hint


def test_csv_without_latency_or_item_columns(tmp_path):
    with pytest.raises(importers.ImportFormatError, match="no median_ms"):
        importers.read(_write(tmp_path / "a.csv", "key,ms\nx,1\n"))
    with pytest.raises(importers.ImportFormatError, match="rows need a key column"):
        importers.read(_write(tmp_path / "b.csv", "name,median_ms\nx,1\n"))
    with pytest.raises(importers.ImportFormatError, match="no header row"):
        importers.read(_write(tmp_path / "c.csv", ""))


_OP = "fbnet_block,16,32,32,16,3"


@pytest.mark.parametrize("text, match", [
    # a misspelt column would be ignored and its default (stride 1) stored instead
    ("kind,cin,h,w,cout,kernel,strid,median_ms\n" + _OP + ",2,0.3\n", "'strid' is not in the schema; did you mean 'stride'"),
    ("Kind,Cin,H,W,Cout,Kernel,Median_ms\n" + _OP + ",0.3\n", "'Kind' is not in the schema; did you mean 'kind'"),
    ("kind,cin,h,w,cout,kernel,p50_ms\n" + _OP + ",0.3\n", "did you mean 'median_ms'"),
    ("kind,cin,h,w,cout,kernel,median_us\n" + _OP + ",300\n", "'median_us' is not in milliseconds"),
    ("kind;cin;h;w;cout;kernel;median_ms\r\nfbnet_block;16;32;32;16;3;0,3\r\n", "separated by ';'"),
    ("kind,cin,h,w,median_ms\nfbnet_block,16,32,32,0.3\n", "need cin, h, w and cout columns; no cout column"),
    ("kind,cin,h,w,cout,kernel,median_ms\n" + _OP + ",0.3,hot\n", "line 2: 8 cells, but the header names 7"),
    ("kind,cin,h,w,cout,kernel,median_ms,round\n" + _OP + ",0.3,0\n" + _OP + ",0.4,0\n",
     "line 3: .* round 0 is already on line 2"),
    # another tool's name for a field: ignored, every op was kernel 1 and k3 and k5 merged
    ("kind,cin,h,w,cout,kernel_size,median_ms\n" + _OP + ",0.3\n", "'kernel_size' is not in the schema; did you mean 'kernel'"),
    ("kind,cin,h,w,cout,kernel,expand_ratio,median_ms\n" + _OP + ",6,0.3\n", "did you mean 'expansion'"),
    ("kind,cin,h,w,cout,kernel,s,median_ms\n" + _OP + ",2,0.3\n", "did you mean 'stride'"),
    # csv keeps the last of two same-named columns: 1.5 would be dropped unseen
    ("key,median_ms,median_ms\nx,1.5,2000\n", "names column 'median_ms' more than once"),
])
def test_a_header_or_row_that_would_be_read_wrong_is_one_clear_error(tmp_path, text, match):
    with pytest.raises(importers.ImportFormatError, match=match) as err:
        importers.read(_write(tmp_path / "m.csv", text))
    assert "\n" not in str(err.value)


def test_other_columns_are_ignored_and_listed_and_rounds_number_after_given_ones(tmp_path):
    result = importers.read(_write(tmp_path / "n.csv", "kind,cin,h,w,cout,kernel,median_ms,round,note\n"
                                   f"{_OP},0.3,1,hot\n{_OP},0.4,,\n{_OP},0.5,0,\n"))
    assert result.details["ignored_columns"] == ["note"]
    assert [r["round"] for r in result.rows] == [1, 2, 0]


@pytest.mark.parametrize("header, row, ignored", [
    ("key,latency_ms,min_ms,max_ms,p95_ms,stddev_ms", "{key},0.3,0.2,0.5,0.45,0.01",
     ["min_ms", "max_ms", "p95_ms", "stddev_ms"]),  # a benchmark's own statistics
    ("space,arch,kind,median_ms", "fbnet-cifar,{arch},network,1.5", []),  # networks labelled as lut does
    ("kind,cin,h,w,cout,kernel,median_ms,counts", _OP + ",0.3,40", ["counts"]),  # not a key column
    ("key,kernel_size,median_ms", "{key},3,0.3", ["kernel_size"]),  # the key gives the op
])
def test_other_tables_columns_still_import(tmp_path, header, row, ignored):
    key = importers.read(_write(tmp_path / "k.csv", f"kind,cin,h,w,cout,kernel,median_ms\n{_OP},0.3\n")).rows[0]["key"]
    arch = "-".join(["0"] * 22)
    result = importers.read(_write(tmp_path / "t.csv", f"{header}\n{row.format(key=key, arch=arch)}\n"))
    assert len(result.rows) == 1 and result.details.get("ignored_columns", []) == ignored


@pytest.mark.parametrize("header, row, says", [
    ("key,kernel,median_ms", "{key},5,0.3", "its key says kernel 3 and its kernel cell says 5"),
    ("key,kind,cin,h,w,cout,median_ms", "{key},fbnet_block,16,32,32,32,0.3", "its key says cout 24 and its cout cell says 32"),
    ("key,kind,median_ms", "{key},skip,0.3", "its key says kind fbnet_block and its kind cell says skip"),
    ("key,space,arch,median_ms", "{net},fbnet-cifar,{other},0.3", "name different networks"),
    ("key,kind,median_ms", "{net},op,0.3", "its key is a network's and its kind cell says op"),
])
def test_a_key_and_field_cells_that_disagree_are_a_bad_row(tmp_path, header, row, says):
    """Which op was measured cannot be told; the key used to win silently."""
    key = "fbnet_block:1x16x32x32:c24:k3:s1:e1:g1:relu:float32"
    net, other = "net:fbnet-cifar:" + "-".join(["0"] * 22), "-".join(["1"] * 22)
    path = _write(tmp_path / "t.csv", f"{header}\n{row.format(key=key, net=net, other=other)}\n")
    with pytest.raises(importers.ImportFormatError, match="line 2: .*" + re.escape(says)):
        importers.read(path)
    agree = _write(tmp_path / "a.csv", "key,kind,kernel,stride,median_ms\n" f"{key},fbnet_block,3,1,0.3\n"
                   f"{net},network,,,0.5\n")  # the same op (or `lut --csv`'s kind) imports
    assert [r["key"] for r in importers.read(agree).rows] == [key, net]


def test_lut_csv_output_imports_elsewhere(warm_home, fast_profile, latbench_cli, tmp_path, monkeypatch):
    """`lut --csv` on one host, `import` on another: every column it writes is understood or ignored."""
    from latbench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["latbench"])
    assert main(["collect", "--device", fast_profile, "--limit", "3", "--rounds", "2"]) == 0
    exported = tmp_path / "local.csv"
    assert latbench_cli("lut", "--device", fast_profile, "--csv", "--out", str(exported)).returncode == 0
    done = latbench_cli("import", str(exported), "--device", "elsewhere", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ops"] == 3  # one row per key (its median over rounds)
    shown = json.loads(latbench_cli("lut", "--device", "elsewhere", "--json").stdout)["rows"]
    with exported.open() as f:
        medians = {r["key"]: float(r["median_ms"]) for r in csv.DictReader(f)}
    assert {r["key"]: r["median_ms"] for r in shown} == pytest.approx(medians)


def test_import_command_stores_rows_once(latbench_home, latbench_cli):
    done = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == summary["stored_new"] == summary["ops"] == 225
    again = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4", "--json")
    assert json.loads(again.stdout)["stored_new"] == 0  # idempotent
    nets = latbench_cli("import", str(NETWORKS), "--device", "pi", "--column", "raspi4",
                        "--source", "hwnasbench-raspi4")
    assert nets.returncode == 0, nets.stderr
    assert "fit-predictor --device pi" in nets.stderr
    assert "raspi4 column is the sum of HW-NAS-Bench's block table" in nets.stderr  # not measured
    with Store(latbench_home / "latbench.db") as store:
        [info] = store.contexts("pi")  # the same --source label: one context for ops and networks
        assert info.context.runtime == "imported"
        assert info.context.runtime_version == "hwnasbench-raspi4"
        assert info.settings == {"source": "hwnasbench-raspi4"}
        table = store.table(info.context)
    assert sum(r["kind"] == "op" for r in table) == 225
    assert sum(r["kind"] == "network" for r in table) == 5000
    batched = latbench_cli("import", str(NETWORKS), "--device", "gpu", "--column", "titanx_32", "--dry-run")
    assert batched.returncode == 0, batched.stderr
    assert "titanx_32 column times a batch of 32 images" in batched.stderr and "import titanx_1" in batched.stderr
    assert "parsed 5000 rows (0 ops, 5000 networks)" in batched.stderr and "nothing stored (--dry-run)" in batched.stderr


def test_a_reimport_with_other_values_says_that_the_stored_ones_were_kept(latbench_home, latbench_cli,
                                                                          tmp_path):
    first = _write(tmp_path / "phone.csv", f"kind,cin,h,w,cout,kernel,median_ms\n{_OP},0.3\n")
    assert latbench_cli("import", str(first), "--device", "ph").returncode == 0
    fixed = _write(tmp_path / "fixed.csv", f"kind,cin,h,w,cout,kernel,median_ms\n{_OP},0.003\n")
    done = latbench_cli("import", str(fixed), "--device", "ph", "--source", "csv-phone")
    assert done.returncode == 0, done.stderr
    assert "kept as stored: 1 row (same key and round), 1 with another median_ms" in done.stderr
    assert "never overwrites" in done.stderr
    again = latbench_cli("import", str(first), "--device", "ph", "--json")
    summary = json.loads(again.stdout)
    assert (summary["stored_new"], summary["already_stored"], summary["already_stored_differing"]) == (0, 1, 0)


def test_values_that_look_like_seconds_get_a_note(latbench_home, latbench_cli, tmp_path):
    seconds = _write(tmp_path / "secs.csv", f"kind,cin,h,w,cout,kernel,median_ms\n{_OP},0.0003\n")
    done = latbench_cli("import", str(seconds), "--device", "ph", "--dry-run")
    assert done.returncode == 0 and "every median_ms is below 0.01 ms (the largest is 0.0003)" in done.stderr
    millis = _write(tmp_path / "ms.csv", f"kind,cin,h,w,cout,kernel,median_ms\n{_OP},0.3\n")
    assert "below 0.01 ms" not in latbench_cli("import", str(millis), "--device", "ph", "--dry-run").stderr


def test_an_import_does_not_hide_the_devices_other_table(latbench_home, latbench_cli, tmp_path):
    done = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4")
    assert done.returncode == 0, done.stderr
    one = _write(tmp_path / "one.csv", f"key,median_ms\n{OpSpec('fbnet_block', 16, 32, 32, 24).key},1.0\n")
    done = latbench_cli("import", str(one), "--device", "pi")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "already has 225 keys measured with imported (hwnasbench-raspi4)" in done.stderr
    assert "--source hwnasbench-raspi4" in done.stderr and "--alongside" in done.stderr
    with Store(latbench_home / "latbench.db") as store:
        assert len(store.contexts("pi")) == 1  # nothing stored
    dry = latbench_cli("import", str(one), "--device", "pi", "--dry-run")
    assert dry.returncode == 2 and "already has 225 keys" in dry.stderr  # says what the import would
    done = latbench_cli("import", str(one), "--device", "pi", "--source", "hwnasbench-raspi4")
    assert done.returncode == 0 and "imported 1 row (1 op, 0 networks)" in done.stderr, done.stderr
    done = latbench_cli("import", str(one), "--device", "pi", "--alongside")
    assert done.returncode == 0, done.stderr
    with Store(latbench_home / "latbench.db") as store:
        assert [c.keys for c in store.contexts("pi")] == [1, 226]  # 225 + the key added with --source
    again = latbench_cli("import", str(one), "--device", "pi")  # into the newest table: allowed
    assert again.returncode == 0, again.stderr
    older = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4")
    assert older.returncode == 2 and older.stderr.count("\n") == 1, older.stderr
    # the table it adds to is there already, not a second one: it would become the newest
    assert "has 2 tables, and this import adds to table" in older.stderr
    assert "(imported (hwnasbench-raspi4)), older than table" in older.stderr
    assert "would become the newest" in older.stderr and "--alongside" in older.stderr
    older = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "raspi4", "--alongside")
    assert older.returncode == 0 and "already stored, with the same values: 225 rows" in older.stderr


def test_messages_print_brackets_as_they_are_on_one_line(latbench_cli, tmp_path):
    folder = tmp_path / ("run[bold]" + "x" * 150)
    folder.mkdir()
    path = _write(folder / "t[v2].csv", "key,median_ms\nfbnet_block:1x16x32x32:c16:k3:s1:e1:g1:relu:float32,1\n")
    done = latbench_cli("import", str(path), "--device", "x", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"from {path} (format csv)" in done.stderr  # rich took [bold] for markup, and wrapped it


def test_import_command_errors_are_one_line(latbench_cli, tmp_path):
    done = latbench_cli("import", str(BLOCKS), "--device", "pi")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--source-device" in done.stderr
    done = latbench_cli("import", str(tmp_path / "none.csv"), "--device", "pi")
    assert done.returncode == 2 and "cannot read" in done.stderr
    done = latbench_cli("import", str(NETWORKS), "--device", "pi", "--format", "hwnasbench")
    assert done.returncode == 2 and "reads as --format help" in done.stderr  # the flag is wrong
    done = latbench_cli("import", str(BLOCKS), "--device", "../etc", "--source-device", "raspi4")
    assert done.returncode == 2 and "bad device name" in done.stderr
    dry = latbench_cli("import", str(BLOCKS), "--device", "pi", "--source-device", "fpga", "--dry-run")
    assert dry.returncode == 0 and "parsed 225 rows" in dry.stderr
    assert not (Path(tmp_path) / "latbench-home" / "latbench.db").exists()


def test_import_help_documents_the_schema(latbench_cli):
    done = latbench_cli("import", "--help")
    assert done.returncode == 0
    for word in ("median_ms", "key", "kind,cin,h,w,cout", "space,arch", "p10_ms", "hwnasbench",
                 "--source-device", "--column"):
        assert word in done.stdout


def test_a_pool_given_by_fields_is_the_global_pool_of_the_spaces(tmp_path):
    """Without a kernel cell an avgpool was stored with kernel 1, a key no space has: its
    measurement never served the space's pool, which was predicted instead."""
    from latbench.spaces import get_space

    space = get_space("fbnet-cifar")
    pool = next(op for op in space.fixed_ops() if op.kind == "avgpool")
    text = f"kind,cin,h,w,cout,median_ms\navgpool,{pool.cin},{pool.h},{pool.w},{pool.cout},0.05\n"
    assert importers.read(_write(tmp_path / "p.csv", text)).rows[0]["key"] == pool.key
