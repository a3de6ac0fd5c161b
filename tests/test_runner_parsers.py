"""Tool runners: benchmark_model, onnxruntime_perf_test and trtexec.

Their parsers read fixture texts written after the tools' real output formats (one per
wording generation; see tests/fixtures/runner_output). Their batch scripts are RUN here
with real shells (dash, and mksh, Android's shell, and busybox sh where installed), over
the local transport, a real sshd and the ADB protocol peer, against small fake tools that
print those fixtures: batching, quoting and per-model failure isolation are shown by
execution, not by reading the script. (This host has none of the real tools.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import uuid
from glob import glob
from pathlib import Path

import pytest
import yaml

from latbench.errors import DeviceError, ProfileError
from latbench.profiles import DeviceProfile, parse_profile
from latbench.protocol import Protocol
from latbench.runners import benchmark_model as bm
from latbench.runners import onnxruntime_perf_test as ort
from latbench.runners import trtexec as trt
from latbench.runners.base import BatchItem, make_runner
from latbench.runners.parsing import ParseError, apply_protocol, strip_log_prefix, to_float
from latbench.runners.script import (
    ScriptItem, batch_script, new_nonce, run_line, split_output, state_script)
from latbench.transports import open_transport
from latbench.transports.local import LocalTransport

pytest_plugins = ["sshd"]  # a real OpenSSH server on 127.0.0.1 (tests/sshd.py)

FIXTURES = Path(__file__).parent / "fixtures" / "runner_output"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def line_no(text: str, startswith: str, nth: int = 1) -> int:
    """1-based number of the nth line of `text` that starts with `startswith` (after strip)."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if ln.strip().startswith(startswith)]
    return hits[nth - 1]


# ---- shared helpers ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ("INFO: count=5 curr=10", "count=5 curr=10"),
    ("ERROR: Failed to mmap model", "Failed to mmap model"),
    ("[11/22/2024-10:00:00] [I] Throughput: 3.2 qps", "Throughput: 3.2 qps"),
    ("[03/28/2024-07:10:16] [I] [TRT] [MemUsageChange] Init", "[MemUsageChange] Init"),
    ("2018-09-10 12:36:15.624324: I tensorflow/tools/benchmark/benchmark_model.cc:469] Graph: [g.pb]",
     "Graph: [g.pb]"),
    ("I0820 10:00:00.123456   12345 benchmark_model.cc:12] count=1 curr=3", "count=1 curr=3"),
    ("Timings (microseconds): count=1 curr=214", "Timings (microseconds): count=1 curr=214"),
])
def test_log_prefixes_are_stripped(raw, message):
    assert strip_log_prefix(raw) == message


@pytest.mark.parametrize("text, value", [("12", 12.0), ("1.2e+03", 1200.0), ("5e-05", 5e-05),
                                         ("-3.5", -3.5), (".25", 0.25), ("inf", float("inf"))])
def test_numbers_as_cpp_streams_print_them(text, value):
    assert to_float(text) == value


@pytest.mark.parametrize("text", ["4.0.1", "12ms", "", "1e", "0x10"])
def test_non_numbers_are_refused(text):
    with pytest.raises(ValueError):
        to_float(text)


def test_protocol_cut_counts_the_tools_own_warmup():
    samples = [9.0, 5.0, 1.0, 1.1, 1.2, 1.3, 1.4]
    kept, info = apply_protocol(samples, warmup_runs=3, warmup_s=0, runs=3, min_time_s=0, max_runs=100,
                                warmup_done_runs=1)
    assert kept == samples[2:] and info["warmup_dropped"] == 2 and info["protocol_met"]
    # the warm-up also lasts at least warmup_s: 9 ms + 5 ms reach 0.012 s only after two runs
    kept, info = apply_protocol(samples, warmup_runs=0, warmup_s=0.012, runs=3, min_time_s=0, max_runs=3)
    assert kept == [1.0, 1.1, 1.2] and info["warmup_dropped"] == 2
    kept, info = apply_protocol(samples, warmup_runs=0, warmup_s=0, runs=10, min_time_s=0, max_runs=100)
    assert len(kept) == 7 and not info["protocol_met"]


# ---- benchmark_model ---------------------------------------------------------------------------

def test_benchmark_model_2018_average_timings():
    rec = bm.parse_result(fixture("bm_2018_average.txt"))
    s = rec["summary"]
    # count=29 first=27695 curr=27604 min=27402 max=28311 avg=27688.3 std=204 (microseconds)
    assert s["count"] == 29
    assert s["mean_ms"] == pytest.approx(27.6883) and s["std_ms"] == pytest.approx(0.204)
    assert (s["min_ms"], s["max_ms"]) == pytest.approx((27.402, 28.311))
    assert (s["first_ms"], s["last_ms"]) == pytest.approx((27.695, 27.604))
    assert "samples_ms" not in rec  # a summary, honestly: the tool printed no runs
    extra = rec["extra"]
    assert extra["warmup"]["count"] == 9 and extra["warmup"]["mean_ms"] == pytest.approx(28.2146)
    assert extra["init_ms"] == pytest.approx(4.071)
    assert extra["inference_mean_ms"] == pytest.approx(27.6883)  # "no stats: 27688.3"


def test_benchmark_model_op_profiling_tables():
    text = fixture("bm_2019_op_profiling.txt")
    rec = bm.parse_result(text)
    # the timed phase, not the op profiler's own "Timings (microseconds): count=431 ..." line
    assert rec["summary"]["count"] == 431 and rec["summary"]["mean_ms"] == pytest.approx(2.31842)
    assert rec["extra"]["first_inference_ms"] == pytest.approx(3.911)
    profile = rec["extra"]["op_profile"]
    # only the regular runs' tables; the initialisation tables (AllocateTensors) are left out
    order = profile["Run Order"]
    assert [r["node_type"] for r in order] == ["DEPTHWISE_CONV_2D", "CONV_2D", "RELU"]
    assert [r["name"] for r in order] == ["[dw/depthwise]", "[pw/Conv2D]", "[out]"]
    assert order[1]["start_ms"] == pytest.approx(1.572) and order[1]["avg_ms"] == pytest.approx(0.702)
    assert order[0]["percent"] == pytest.approx(68.12) and order[2]["cdf_percent"] == pytest.approx(100.0)
    by_type = {r["node_type"]: r for r in profile["Summary by node type"]}
    assert by_type["CONV_2D"]["avg_ms"] == pytest.approx(0.702) and by_type["RELU"]["count"] == 1
    assert sum(r["avg_ms"] for r in by_type.values()) == pytest.approx(2.306, abs=1e-3)


def test_benchmark_model_info_prefix_and_scientific_notation():
    rec = bm.parse_result(fixture("bm_2024_info_prefix.txt"))
    s = rec["summary"]
    # INFO: count=30 first=1.20961e+06 curr=1.20512e+06 min=1.19404e+06 max=1.2501e+06 avg=1.20733e+06 std=1.1e+04
    assert s["count"] == 30 and s["mean_ms"] == pytest.approx(1207.33) and s["std_ms"] == pytest.approx(11.0)
    assert (s["min_ms"], s["max_ms"]) == pytest.approx((1194.04, 1250.1))
    assert rec["extra"]["first_inference_ms"] == pytest.approx(1310.71)
    assert rec["extra"]["warmup_mean_ms"] == pytest.approx(1215.98)


def test_benchmark_model_percentiles_and_all_same_warmup():
    rec = bm.parse_result(fixture("bm_percentiles.txt"))
    s = rec["summary"]
    assert s["median_ms"] == pytest.approx(0.799)
    assert s["percentiles_ms"] == pytest.approx({"5": 0.784, "50": 0.799, "95": 0.873})
    warm = rec["extra"]["warmup"]  # count=2 curr=812(all same) p5=812 median=812 p95=812
    assert warm["count"] == 2 and warm["mean_ms"] == warm["min_ms"] == warm["max_ms"] == pytest.approx(0.812)
    assert warm["std_ms"] == 0.0


def test_benchmark_model_single_warmup_run():
    rec = bm.parse_result(fixture("bm_single_warmup.txt"))  # warm-up "count=1 curr=5120"
    assert rec["extra"]["warmup"]["count"] == 1 and rec["extra"]["warmup"]["mean_ms"] == pytest.approx(5.12)
    assert rec["summary"]["count"] == 5 and rec["summary"]["mean_ms"] == pytest.approx(5.006)


def test_benchmark_model_bad_number_names_its_line():
    text = fixture("bm_bad_stats.txt")
    with pytest.raises(ParseError) as err:
        bm.parse_result(text)
    assert err.value.line_no == line_no(text, "INFO: count=50")
    assert "min=4.0.1" in err.value.message and "'4.0.1' is not a number" in err.value.message


@pytest.mark.parametrize("name", ["bm_2018_average.txt", "bm_2019_op_profiling.txt", "bm_2024_info_prefix.txt",
                                  "bm_percentiles.txt"])
@pytest.mark.parametrize("pattern, replacement, reason", [
    (r"avg=", "avgx=", "unknown field 'avgx'"),
    (r"std=(\S+)", r"std=abc\1", "is not a number"),
    (r"min=\S+", "min=", "'' is not a number"),
    (r"^(INFO: )?count=\d+", r"\1count=many", "count is not a whole number"),
    (r" max=\S+", "", "missing max"),
])
def test_benchmark_model_damaged_timed_line_is_reported(name, pattern, replacement, reason):
    text = fixture(name)
    lines = text.splitlines()
    target = line_no(text, next(p for p in ("INFO: count=", "count=") if p in text), nth=2) - 1
    damaged = re.sub(pattern, replacement, lines[target], count=1)
    assert damaged != lines[target]
    lines[target] = damaged
    with pytest.raises(ParseError) as err:
        bm.parse_result("\n".join(lines))
    assert err.value.line_no == target + 1 and err.value.line == damaged.removeprefix("INFO: ")
    assert reason in err.value.reason


def test_benchmark_model_table_row_with_missing_field():
    text = fixture("bm_2019_op_profiling.txt")
    lines = text.splitlines()
    target = line_no(text, "CONV_2D") - 1  # the first CONV_2D row, in the Run Order table
    lines[target] = lines[target].rsplit("\t", 2)[0]
    with pytest.raises(ParseError) as err:
        bm.parse_result("\n".join(lines))
    assert err.value.line_no == target + 1 and "fields where the header has 9" in err.value.reason


def test_benchmark_model_table_with_a_new_column_is_kept():
    text = fixture("bm_2019_op_profiling.txt")
    lines = text.splitlines()
    for i, ln in enumerate(lines):  # a release that adds an "[avg us]" column before the name
        if "[Name]" in ln:
            lines[i] = ln.replace("\t[Name]", "\t[avg us]\t[Name]")
        elif ln.startswith("\t") and ln.count("\t") == 9:
            parts = ln.split("\t")
            lines[i] = "\t".join(parts[:-1] + [f"{float(parts[4]) * 1000:.1f}", parts[-1]])
    rec = bm.parse_result("\n".join(lines))
    order = rec["extra"]["op_profile"]["Run Order"]
    assert [r["avg_us"] for r in order] == pytest.approx([1571.0, 702.0, 33.0])
    assert order[0]["name"] == "[dw/depthwise]"


def test_benchmark_model_that_stopped_after_warmup():
    text = fixture("bm_2024_info_prefix.txt")
    cut = "\n".join(text.splitlines()[:line_no(text, "INFO: Running benchmark", nth=2)])
    with pytest.raises(ParseError, match="stopped after the warm-up"):
        bm.parse_result(cut)
    with pytest.raises(ParseError, match="no 'count=' statistics line"):
        bm.parse_result(fixture("bm_failed.txt"))


# ---- onnxruntime_perf_test ---------------------------------------------------------------------

@pytest.mark.parametrize("name, count, mean_ms, p50_ms, p999_ms", [
    ("ort_2019_stdout.txt", 212, 4.80835, 4.772, 7.31),  # Total iterations / Average time cost
    ("ort_2021_stdout.txt", 388, 2.58461, 2.56, 3.9),  # Average inference time cost
    ("ort_2024_stdout.txt", 7431, 0.134601, 0.131, 0.61),  # ... cost total, first inference, per second
])
def test_perf_test_stdout_generations(name, count, mean_ms, p50_ms, p999_ms):
    rec = ort.parse_result(fixture(name), "", Protocol())
    assert "samples_ms" not in rec  # no result file: the summary stands in
    s = rec["summary"]
    assert s["count"] == count and s["mean_ms"] == pytest.approx(mean_ms)
    assert s["median_ms"] == pytest.approx(p50_ms) and s["percentiles_ms"]["99.9"] == pytest.approx(p999_ms)
    assert set(s["percentiles_ms"]) == {"50", "90", "95", "99", "99.9"}


def test_perf_test_2024_extras():
    found = ort.parse_stdout(fixture("ort_2024_stdout.txt"))
    assert found["first"] == 3.0 and found["session"] == pytest.approx(18.7)  # 0.0187 s
    assert found["per_second"] == pytest.approx(7427.9) and found["peak_bytes"] == 29917184


def test_perf_test_result_file_gives_the_runs():
    csv = fixture("ort_result_file.csv")
    rows = [ln.split(",") for ln in csv.splitlines() if "," in ln]
    expected_ms = [float(r[1]) * 1000 for r in rows]
    assert ort.parse_result_file(csv) == pytest.approx(expected_ms)
    protocol = Protocol(warmup_runs=3, warmup_s=0, runs=10, min_time_s=0, max_runs=20)
    rec = ort.parse_result(fixture("ort_2024_run_stdout.txt"), csv, protocol)
    # perf_test ran 1 warm-up itself: 2 more runs are dropped, then at most max_runs are kept
    assert rec["samples_ms"] == pytest.approx(expected_ms[2:22])
    assert rec["extra"]["warmup_dropped"] == 2 and rec["extra"]["protocol_met"]
    assert rec["extra"]["first_inference_ms"] == 2.0
    assert rec["summary"]["count"] == len(rows) and rec["summary"]["min_ms"] == pytest.approx(0.095)


def test_perf_test_bad_result_row_names_its_line():
    text = fixture("ort_bad_result.csv")
    with pytest.raises(ParseError) as err:
        ort.parse_result_file(text)
    assert err.value.line_no == 3 and "0.0011x" in err.value.line
    shuffled = "models,0.001,1,1,0\nmodels,0.001,1,1,0\n"  # two runs appended to one file
    with pytest.raises(ParseError, match="run indices"):
        ort.parse_result_file(shuffled)


def test_perf_test_unknown_unit_is_reported():
    text = fixture("ort_bad_stdout.txt")
    with pytest.raises(ParseError) as err:
        ort.parse_stdout(text)
    assert err.value.line_no == line_no(text, "Average inference time cost total") and "'us'" in err.value.reason


# ---- trtexec -----------------------------------------------------------------------------------

@pytest.mark.parametrize("number, version", [("8601", "8.6.1"), ("100300", "10.3.0"), ("7103", "7.1.3"),
                                             ("8502", "8.5.2"), ("100900", "10.9.0")])
def test_trtexec_banner_version(number, version):
    assert trt.version_from_number(number) == version
    log = f"&&&& RUNNING TensorRT.trtexec [TensorRT v{number}] # trtexec --help"
    assert trt.parse_log(log).version == version


def test_trtexec_7_host_latency_block_with_warmups_in_the_export():
    log, times = fixture("trt7_host_latency.txt"), fixture("trt7_times.json")
    protocol = Protocol(warmup_runs=2, warmup_s=0, runs=5, min_time_s=0, max_runs=100)
    rec = trt.parse_result(log, times, "gpu_compute", protocol)
    computes = [float(ln.split('"computeMs" : ')[1].split(",")[0]) for ln in times.splitlines() if "{" in ln]
    # "Warmup completed 3 queries" + "Timing trace has 10 queries": the first 3 exported are warm-up
    assert len(computes) == 13 and rec["samples_ms"] == pytest.approx(computes[3:])
    s = rec["summary"]  # the "GPU Compute" block
    assert s["count"] == 10 and s["mean_ms"] == pytest.approx(3.05903) and s["percentiles_ms"] == {"99": 3.2}
    host = trt.parse_result(log, "", "latency", protocol)["summary"]  # the "Host Latency" block
    assert host["median_ms"] == pytest.approx(3.57601) and host["min_ms"] == pytest.approx(3.52058)
    assert trt.parse_log(log).stats["Enqueue Time"] == pytest.approx({"min": 0.49, "max": 0.61, "median": 0.53})


@pytest.mark.parametrize("metric, field, summary_mean", [("gpu_compute", "computeMs", 0.213623),
                                                         ("latency", "latencyMs", 0.297363)])
def test_trtexec_8_performance_summary_and_times(metric, field, summary_mean):
    log, times = fixture("trt8_summary.txt"), fixture("trt8_times.json")
    rec = trt.parse_result(log, times, metric, Protocol(warmup_runs=2, warmup_s=0, runs=5, min_time_s=0))
    values = [float(ln.split(f'"{field}" : ')[1].split(" ")[0].rstrip(",}")) for ln in times.splitlines()
              if "{" in ln]
    # 412 warm-up queries already ran (over warmUp=100 ms), so no exported query is dropped
    assert rec["samples_ms"] == pytest.approx(values) and rec["extra"]["warmup_dropped"] == 0
    assert rec["summary"]["mean_ms"] == pytest.approx(summary_mean) and rec["summary"]["count"] == 8
    assert rec["extra"]["throughput_qps"] == pytest.approx(3187.25)
    assert trt.parse_log(log).version == "8.6.2"  # "TensorRT version: 8.6.2" wins over the banner


def test_trtexec_10_summary_without_export():
    rec = trt.parse_result(fixture("trt10_summary.txt"), "", "gpu_compute", Protocol())
    s = rec["summary"]
    assert "samples_ms" not in rec and s["count"] == 152
    assert s["median_ms"] == pytest.approx(6.48242)
    assert s["percentiles_ms"] == pytest.approx({"90": 6.58594, "95": 6.63574, "99": 7.04199})
    assert trt.parse_log(fixture("trt10_summary.txt")).version == "10.3.0"


def test_trtexec_bad_summary_and_export_lines():
    text = fixture("trt_bad_summary.txt")
    with pytest.raises(ParseError) as err:
        trt.parse_log(text)
    assert err.value.line_no == line_no(text, "[01/02/2023-08:00:00] [I] Latency:")
    assert "'mean 10.02 ms'" in err.value.reason
    times = fixture("trt8_times.json").splitlines()
    times[3] = times[3].replace('"computeMs"', '"computeMsX"')
    with pytest.raises(ParseError) as err:
        trt.parse_times("\n".join(times), "computeMs")
    assert err.value.line_no == 4 and "no 'computeMs'" in err.value.reason
    # C++ prints inf, which JSON lacks: read, and left out of the samples
    inf = '[\n  { "computeMs" : inf, "latencyMs" : 1.5 }\n, { "computeMs" : 1.25, "latencyMs" : 1.5 }\n]'
    assert trt.parse_times(inf, "computeMs") == [float("inf"), 1.25]


# ---- the batch script, run by real shells ------------------------------------------------------

def _shells() -> list[list[str]]:
    found = [["/bin/sh"]]
    if shutil.which("mksh"):
        found.append([shutil.which("mksh")])
    if shutil.which("busybox"):
        found.append([shutil.which("busybox"), "sh"])
    return found


def _fake_benchmark_model(path: Path, log: Path) -> Path:
    """A benchmark_model stand-in: logs its argv, prints a real-format fixture, fails for
    models named *broken*, hangs for *slow*."""
    ok, failed = FIXTURES / "bm_2024_info_prefix.txt", FIXTURES / "bm_failed.txt"
    path.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" >> {shlex.quote(str(log))}
graph=
for a in "$@"; do case $a in --graph=*) graph=${{a#--graph=}} ;; esac; done
case $graph in
  *broken*) cat {shlex.quote(str(failed))}; exit 1 ;;
  *slow*) sleep 20 ;;
esac
echo "graph=$graph"
grep Cpus_allowed_list /proc/self/status
cat {shlex.quote(str(ok))}
""")
    path.chmod(0o755)
    return path


def _nasty_models(root: Path) -> tuple[list[Path], Path]:
    """Model files whose paths hold spaces, quotes, `;`, `$(...)` and a `; touch /tmp/...`."""
    canary = Path(f"/tmp/latbench-pwned-{uuid.uuid4().hex[:8]}")
    inject = root / f"a; touch {canary} ;b" / "m1.tflite"  # dirs "a; touch ", "tmp", "latbench-pwned-.. ;b"
    models = [
        inject,
        root / "dir with spaces" / "it's \"quoted\".tflite",
        root / "sub" / "broken; echo INJECTED.tflite",
        root / "sub" / "$(touch pwned-subst).tflite",
        root / "sub" / "`touch pwned-tick` & x.tflite",
    ]
    for m in models:
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_bytes(b"TFL3 fake model")
    return models, canary


def _no_pwned_files(*roots: Path) -> bool:
    return not any(p for root in roots for p in root.rglob("pwned*"))


@pytest.mark.parametrize("shell", _shells(), ids=lambda s: Path(s[0]).name)
def test_batch_script_quotes_batches_and_isolates_failures(shell, tmp_path):
    """One script, many models: each model's output is framed, a failing model leaves the
    others alone, and no part of a path is ever run as a command."""
    log = tmp_path / "argv.log"
    bindir = tmp_path / "bench model's bin"
    bindir.mkdir()
    fake = _fake_benchmark_model(bindir / "benchmark_model", log)
    models, canary = _nasty_models(tmp_path / "models")
    nonce = new_nonce()
    items = [ScriptItem(str(i), [run_line([str(fake), f"--graph={m}", "--num_threads=2"], 30)])
             for i, m in enumerate(models)]
    workdir = tmp_path / "work dir; rm -rf x"
    workdir.mkdir()
    script = tmp_path / "batch.sh"
    script.write_text(batch_script(items, nonce=nonce, workdir=str(workdir)))
    res = subprocess.run([*shell, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    frames = split_output(res.stdout, nonce)

    assert frames.done and frames.order == [str(i) for i in range(len(models))]
    assert [frames.items[str(i)].rc for i in range(len(models))] == [0, 0, 1, 0, 0]
    for i, m in enumerate(models):
        text = frames.items[str(i)].text
        if "broken" in m.name:
            assert "Failed to mmap model" in text and "graph=" not in text
        else:
            assert f"graph={m}" in text.splitlines()  # the tool got the path intact
            assert bm.parse_result(text)["summary"]["count"] == 30
    graphs = [ln.removeprefix("--graph=") for ln in log.read_text().splitlines() if ln.startswith("--graph=")]
    assert graphs == [str(m) for m in models]  # one run each, in order, each path one argument
    assert "INJECTED" not in res.stdout.replace("broken; echo INJECTED", "")
    assert not canary.exists() and _no_pwned_files(tmp_path)
    assert frames.before is not None and frames.after is not None
    assert frames.after["time"] >= frames.before["time"]


def test_split_output_reads_states_and_a_batch_cut_short():
    n = "abc123"
    m = f"@@latbench:{n}"
    out = "\n".join([
        f"{m} state before", f"{m} temp 45000 cpu-0-0-usr", f"{m} temp 38 battery", f"{m} temp -273000 broken zone",
        f"{m} cpu cpu0 1804800 schedutil", f"{m} cpu cpu4 ? ?", f"{m} load 1.25", f"{m} time 1700000000",
        f"{m} begin 0", "INFO: count=3 curr=5", f"{m} end 0 rc=0",
        f"{m} begin 1", "partial output", "@@latbench:other-nonce end 1 rc=0",  # a forged marker is text
    ])
    frames = split_output(out.replace("\n", "\r\n"), n)  # as a pty on old phones sends it
    st = frames.before
    assert st["temperatures_c"] == {"cpu-0-0-usr": 45.0, "battery": 38.0}
    assert st["max_temperature_c"] == 45.0 and st["governors"] == {"cpu0": "schedutil"}
    assert st["frequencies_khz"] == {"cpu0": 1804800} and st["load_1m"] == 1.25 and st["time"] == 1.7e9
    assert frames.items["0"].rc == 0 and frames.items["0"].text == "INFO: count=3 curr=5"
    assert frames.items["1"].rc is None  # the script stopped inside model 1
    assert frames.items["1"].text.endswith("other-nonce end 1 rc=0") and not frames.done


@pytest.mark.parametrize("shell", _shells(), ids=lambda s: Path(s[0]).name)
def test_a_tool_whose_output_ends_without_a_newline_keeps_its_end_and_the_models_after_it(shell, tmp_path):
    # onnxruntime_perf_test prints "failed to open result file" with no newline; `timeout` can cut
    # a line: the end marker follows on the same line
    nonce = new_nonce()
    items = [ScriptItem("a", ["printf 'failed to open result file'; rc=3"]),
             ScriptItem("b", ["echo fine; rc=0"])]
    script = tmp_path / "batch.sh"
    script.write_text(batch_script(items, nonce=nonce))
    res = subprocess.run([*shell, str(script)], capture_output=True, text=True, timeout=60)
    frames = split_output(res.stdout, nonce)
    assert frames.done and frames.order == ["a", "b"]
    assert (frames.items["a"].rc, frames.items["a"].text) == (3, "failed to open result file")
    assert (frames.items["b"].rc, frames.items["b"].text) == (0, "fine")


def test_bad_item_id_is_refused():
    with pytest.raises(ValueError, match="must match"):
        batch_script([ScriptItem("0; reboot", ["true"])], nonce="n")


def test_state_script_runs_here():
    nonce = new_nonce()
    res = subprocess.run(["/bin/sh", "-c", state_script(nonce)], capture_output=True, text=True, timeout=30)
    state = split_output(res.stdout, nonce).before
    zones = [z for z in glob("/sys/class/thermal/thermal_zone*") if Path(z, "temp").exists()]
    assert state is not None and isinstance(state["time"], float)
    if Path("/proc/loadavg").exists():
        assert state["load_1m"] == pytest.approx(float(Path("/proc/loadavg").read_text().split()[0]), abs=2.0)
    if not zones:
        assert state["max_temperature_c"] is None and state["temperatures_c"] == {}


# ---- runners over the local transport ----------------------------------------------------------

def _profile(name: str, runner: str, runtime: str, fmt: str, tmp_path: Path, **kw) -> DeviceProfile:
    protocol = kw.pop("protocol", Protocol(warmup_runs=3, warmup_s=0, runs=10, min_time_s=0, max_runs=40))
    return DeviceProfile(name=name, transport="local", runner=runner, runtime=runtime, format=fmt, threads=2,
                         protocol=protocol, timeout_s=kw.pop("timeout_s", 60),
                         source=str(tmp_path / f"{name}.yaml"), **kw)


@pytest.fixture
def bm_setup(latbench_home, tmp_path):
    log = tmp_path / "argv.log"
    (tmp_path / "bin").mkdir()
    fake = _fake_benchmark_model(tmp_path / "bin" / "benchmark_model", log)
    return fake, log


def _open(profile: DeviceProfile):
    transport = LocalTransport(profile)
    transport.connect()
    return transport, make_runner(transport, profile)


def test_benchmark_model_runner_batch_end_to_end(bm_setup, tmp_path):
    fake, log = bm_setup
    profile = _profile("phone 'x'; touch pwned", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary": str(fake), "xnnpack": False})
    transport, runner = _open(profile)
    models, canary = _nasty_models(tmp_path / "models")
    info = runner.info()
    assert info["binary"] == str(fake)
    assert runner.runtime_version(info) == \
        f"benchmark_model sha256:{hashlib.sha256(fake.read_bytes()).hexdigest()[:12]}"
    assert info["cores"] == len(glob("/sys/devices/system/cpu/cpu[0-9]*"))
    assert abs(info["free_kb"] - shutil.disk_usage(transport.workdir).free // 1024) < 64 * 1024  # df -k

    out = runner.run_batch([BatchItem(f"m{i}", m) for i, m in enumerate(models)])
    assert out.error is None and set(out.results) == {f"m{i}" for i in range(len(models))}
    for i, m in enumerate(models):
        rec = out.results[f"m{i}"]
        if "broken" in m.name:
            assert not rec["ok"] and "benchmark_model exited with 1" in rec["error"]
            # the cause, not the closing "ERROR: Benchmarking failed." (bm_failed.txt)
            assert "Could not open '/data/local/tmp/latbench/models/missing.tflite'" in rec["error"]
            assert "Benchmarking failed" not in rec["error"] and "missing or unreadable" in rec["error"]
        else:
            assert rec["ok"] and rec["summary"]["mean_ms"] == pytest.approx(1207.33)
    argv = log.read_text().splitlines()
    # the command builder's flags, from the profile
    for flag in ("--num_threads=2", "--warmup_runs=3", "--warmup_min_secs=0", "--num_runs=10",
                 "--min_secs=0", "--use_xnnpack=false"):
        assert argv.count(flag) == len(models), flag
    assert out.start["runner"] == "benchmark_model" and out.start["state"] is not None
    assert out.end["state"] is not None
    assert not canary.exists() and _no_pwned_files(tmp_path, Path(transport.workdir))


def test_a_delegate_that_ran_none_of_the_model_fails_it_instead_of_storing_cpu_times(latbench_home, tmp_path):
    # benchmark_model skips a delegate it cannot create (WARN) and times on the CPU, exit code 0
    ok = FIXTURES / "bm_2024_info_prefix.txt"
    fake = tmp_path / "benchmark_model"
    fake.write_text(f"""#!/bin/sh
case "$*" in
  *cpu.tflite*) echo "WARN: GPU acceleration is unsupported on this platform." ;;
  *none.tflite*) echo "INFO: Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate." ;;
  *part.tflite*) echo "INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 5 delegate kernels." ;;
  *) echo "INFO: Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate." ;;
esac
cat {shlex.quote(str(ok))}
""")
    fake.chmod(0o755)
    models = []
    for name in ("cpu", "none", "part", "full"):
        models.append(tmp_path / f"{name}.tflite")
        models[-1].write_bytes(b"TFL3 fake model")
    gpu = _profile("phone", "benchmark_model", "litert", "tflite", tmp_path,
                   runtime_options={"binary": str(fake), "gpu": True})
    _, runner = _open(gpu)
    out = runner.run_batch([BatchItem(m.stem, m) for m in models])
    assert out.error is None
    for name, said in (("cpu", "WARN: GPU acceleration is unsupported"), ("none", "will not be executed")):
        assert out.results[name]["ok"] is False
        assert "the GPU delegate was asked for (runtime_options gpu: true)" in out.results[name]["error"]
        assert said in out.results[name]["error"] and "gpu: false" in out.results[name]["error"]
    assert out.results["part"]["extra"]["gpu_delegated"] == "partial (5 kernels)"
    assert out.results["full"]["extra"]["gpu_delegated"] == "full"
    # without the option the same CPU run is what was asked for
    _, cpu_runner = _open(_profile("cpu", "benchmark_model", "litert", "tflite", tmp_path,
                                   runtime_options={"binary": str(fake)}))
    assert cpu_runner.run_batch([BatchItem("cpu", models[0])]).results["cpu"]["ok"] is True


def test_benchmark_model_runner_pins_cores_with_taskset(bm_setup, tmp_path):
    if not shutil.which("taskset"):
        pytest.skip("taskset (util-linux) is not installed")
    fake, _ = bm_setup
    profile = _profile("pinned", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary": str(fake)}, connection={"cpu_mask": "1"})
    _, runner = _open(profile)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    item = runner.item(BatchItem("0", model), str(model), 30)
    assert item.body[0].startswith("lb_run 30 taskset 1 ")
    assert runner.run_batch([BatchItem("0", model)]).results["0"]["ok"]
    # the fake prints the CPUs it may run on: taskset 1 leaves only CPU 0
    nonce = new_nonce()
    res = subprocess.run(["/bin/sh", "-c", batch_script([item], nonce=nonce)], capture_output=True, text=True,
                         timeout=60)
    text = split_output(res.stdout, nonce).items["0"].text
    assert "Cpus_allowed_list:\t0" in text.splitlines()


def test_benchmark_model_per_model_time_limit(bm_setup, tmp_path, monkeypatch):
    fake, _ = bm_setup
    profile = _profile("slowpoke", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary": str(fake)})
    _, runner = _open(profile)
    monkeypatch.setattr(runner, "model_limit_s", lambda n: 1.0)
    slow, fast = tmp_path / "slow.tflite", tmp_path / "fast.tflite"
    slow.write_bytes(b"x")
    fast.write_bytes(b"x")
    out = runner.run_batch([BatchItem("0", slow), BatchItem("1", fast)])
    assert not out.results["0"]["ok"] and "did not finish within" in out.results["0"]["error"]
    assert out.results["1"]["ok"] and out.error is None


def test_benchmark_model_runner_version_and_missing_tool(latbench_home, tmp_path, bm_setup):
    fake, _ = bm_setup
    profile = _profile("versioned", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary": str(fake), "version": "2.16.1"})
    _, runner = _open(profile)
    assert runner.runtime_version(runner.info()) == "benchmark_model 2.16.1"
    missing = _profile("bare", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary": str(tmp_path / "nowhere" / "benchmark_model")})
    _, runner = _open(missing)
    with pytest.raises(DeviceError) as err:
        runner.runtime_version(runner.info())
    assert "was not found" in err.value.message and "adb push benchmark_model" in err.value.hint
    with pytest.raises(DeviceError):
        runner.run_batch([BatchItem("0", fake)])


def test_benchmark_model_binary_local_is_pushed(latbench_home, tmp_path, bm_setup):
    fake, _ = bm_setup
    profile = _profile("pushy", "benchmark_model", "litert", "tflite", tmp_path,
                       runtime_options={"binary_local": str(fake)})
    _, runner = _open(profile)
    info = runner.info()
    assert info["binary"] == str(fake)  # the local transport uses files in place
    assert runner.runtime_version(info).startswith("benchmark_model sha256:")


@pytest.mark.parametrize("fields, problem", [
    ({"runtime": "onnxruntime", "format": "onnx"}, "runs runtime litert"),
    ({"runtime_options": {"xnnpak": True}}, "does not know"),
    ({"runtime_options": {"xnnpack": "yes"}}, "must be bool"),
    ({"runtime_options": {"extra_args": ["--a", 3]}}, "list of strings"),
])
def test_tool_runner_profile_checks(latbench_home, tmp_path, fields, problem):
    base = {"runtime": "litert", "format": "tflite"}
    base.update(fields)
    profile = _profile("checked", "benchmark_model", base.pop("runtime"), base.pop("format"), tmp_path, **base)
    with pytest.raises(ProfileError, match=problem.replace("(", r"\(")):
        _open(profile)


def _fake_perf_test(path: Path, log: Path) -> Path:
    """An onnxruntime_perf_test stand-in: honours -m/-r and the result file; a model named
    *slow* manages only 2 runs in duration mode."""
    stdout = FIXTURES / "ort_2024_run_stdout.txt"
    path.write_text(f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(log))}
mode=duration; r=0; model=; res=
while [ $# -gt 0 ]; do
  case $1 in
    -m) mode=$2; shift 2 ;;
    -r) r=$2; shift 2 ;;
    -t|-e|-x|-y|-o) shift 2 ;;
    -*) shift ;;
    *) if [ -z "$model" ]; then model=$1; else res=$1; fi; shift ;;
  esac
done
[ -f "$model" ] || {{ echo "Load model from $model failed" >&2; exit 255; }}
if [ "$mode" = times ]; then n=$r; else case $model in *slow*) n=2 ;; *) n=30 ;; esac; fi
i=0
while [ $i -lt $n ]; do echo "models,0.00$((100 + i)),29917184,99,$i" >> "$res"; i=$((i + 1)); done
cat {shlex.quote(str(stdout))}
""")
    path.chmod(0o755)
    return path


def test_perf_test_runner_tops_up_slow_models(latbench_home, tmp_path):
    log = tmp_path / "argv.log"
    fake = _fake_perf_test(tmp_path / "onnxruntime_perf_test", log)
    protocol = Protocol(warmup_runs=3, warmup_s=0, runs=12, min_time_s=0.2, max_runs=25)
    profile = _profile("jetson ort", "onnxruntime_perf_test", "onnxruntime", "onnx", tmp_path,
                       protocol=protocol, runtime_options={"binary": str(fake), "spinning": False})
    _, runner = _open(profile)
    fast, slow, gone = tmp_path / "fast op.onnx", tmp_path / "slow 'op'.onnx", tmp_path / "gone.onnx"
    fast.write_bytes(b"x")
    slow.write_bytes(b"x")
    out = runner.run_batch([BatchItem("0", fast), BatchItem("1", slow), BatchItem("2", gone)])
    assert out.error is None
    calls = log.read_text().splitlines()
    # fast: one duration run of ceil(0 + 0.2) = 1 s; slow: 2 runs < 2 + 12 needed -> a fixed-count run
    assert [c.split(" -m ")[1].split(" ")[:2] for c in calls] == \
        [["duration", "-t"], ["duration", "-t"], ["times", "-r"], ["duration", "-t"]]
    assert all(c.startswith("-I -s -e cpu -x 2 -y 1 -m ") and " -D " in c for c in calls)
    assert calls[2].split(" -r ")[1].split(" ")[0] == "14"
    fast_rec, slow_rec = out.results["0"], out.results["1"]
    # 30 runs of 1.00..1.29 ms: 2 more warm-up runs dropped, at most max_runs kept
    assert fast_rec["samples_ms"] == pytest.approx([(100 + i) / 100 for i in range(2, 27)])
    assert slow_rec["samples_ms"] == pytest.approx([(100 + i) / 100 for i in range(2, 14)])
    assert len(slow_rec["samples_ms"]) == protocol.runs
    assert not out.results["2"]["ok"] and "exited with 255" in out.results["2"]["error"]


def _fake_trtexec(path: Path, log: Path) -> Path:
    summary, times = FIXTURES / "trt8_summary.txt", FIXTURES / "trt8_times.json"
    path.write_text(f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(log))}
for a in "$@"; do
  case $a in
    --help) echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help"; exit 0 ;;
    --saveEngine=*) engine=${{a#--saveEngine=}}; echo engine > "$engine" ;;
    --loadEngine=*) [ -f "${{a#--loadEngine=}}" ] || exit 1 ;;
    --exportTimes=*) cp {shlex.quote(str(times))} "${{a#--exportTimes=}}" ;;
  esac
done
cat {shlex.quote(str(summary))}
""")
    path.chmod(0o755)
    return path


def test_trtexec_runner_builds_once_then_loads(latbench_home, tmp_path):
    log = tmp_path / "argv.log"
    fake = _fake_trtexec(tmp_path / "trtexec", log)
    profile = _profile("orin nano", "trtexec", "tensorrt", "onnx", tmp_path,
                       runtime_options={"binary": str(fake), "fp16": True},
                       protocol=Protocol(warmup_runs=2, warmup_s=0.1, runs=5, min_time_s=0.5, max_runs=40))
    _, runner = _open(profile)
    assert runner.runtime_version(runner.info()) == "trtexec 8.6.1"  # from the --help banner
    model = tmp_path / "op $(x).onnx"
    model.write_bytes(b"onnx bytes")
    first = runner.run_batch([BatchItem("0", model)])
    second = runner.run_batch([BatchItem("0", model)])
    calls = [c for c in log.read_text().splitlines() if "--help" not in c]
    assert f"--onnx={model}" in calls[0] and "--saveEngine=" in calls[0] and "--fp16" in calls[0]
    assert "--loadEngine=" in calls[1] and "--onnx=" not in calls[1]
    for flag in ("--warmUp=100", "--iterations=7", "--duration=1", "--useSpinWait"):
        assert flag in calls[0].split() and flag in calls[1].split()
    for out in (first, second):
        rec = out.results["0"]
        assert rec["ok"] and len(rec["samples_ms"]) == 8 and rec["summary"]["count"] == 8


def test_trtexec_engine_cache_key_follows_model_build_flags_and_tensorrt(latbench_home, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"one")
    fake = _fake_trtexec(tmp_path / "trtexec", tmp_path / "argv.log")

    def name(binary: Path = fake, **options) -> str:
        profile = _profile("keys", "trtexec", "tensorrt", "onnx", tmp_path,
                           runtime_options={"binary": str(binary), **options})
        return _open(profile)[1].engine_name(BatchItem("0", model))

    plain = name()
    assert name(fp16=True) != plain and name(extra_args=["--fp16"]) != plain
    assert name(spin_wait=False) == plain  # a timing flag does not change the engine
    # an engine only loads in the TensorRT that built it: a new JetPack builds new ones
    upgraded = tmp_path / "trtexec-10"
    upgraded.write_text(fake.read_text().replace("TensorRT v8601", "TensorRT v100300"))
    upgraded.chmod(0o755)
    assert name(upgraded) != plain
    model.write_bytes(b"two")  # re-exported model: new engine
    assert name() != plain


# ---- over the real ssh and adb transports ------------------------------------------------------

def _remote_profile(tmp_path: Path, transport: str, connection: dict) -> DeviceProfile:
    """A benchmark_model profile the way a user writes it; the fake tool is pushed (binary_local)."""
    (tmp_path / "bin").mkdir()
    fake = _fake_benchmark_model(tmp_path / "bin" / "benchmark_model", tmp_path / "argv.log")
    data = {"name": "tool-remote", "transport": transport, "runner": "benchmark_model", "runtime": "litert",
            "format": "tflite", "threads": 1, "runtime_options": {"binary_local": str(fake)},
            "connection": {**connection, "workdir": str(tmp_path / "odd 'w' ;x" / "work")},
            "protocol": {"warmup_runs": 1, "warmup_s": 0.0, "runs": 3, "min_time_s": 0.0, "max_runs": 3},
            "timeout_s": 120}
    path = tmp_path / "tool-remote.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_profile(path)


def _batch_over(profile: DeviceProfile, tmp_path: Path) -> None:
    models, canary = _nasty_models(tmp_path / "models")
    transport = open_transport(profile)
    transport.connect()
    try:
        runner = make_runner(transport, profile)
        info = runner.info()
        assert info["binary"] == f"{transport.workdir}/bin/benchmark_model"  # pushed, made executable
        assert runner.runtime_version(info).startswith("benchmark_model sha256:")
        out = runner.run_batch([BatchItem(str(i), m) for i, m in enumerate(models)])
        assert out.error is None and out.start["state"] is not None
        # each stored batch names the device it ran on (another board under one profile shows)
        assert out.start["device"]["hostname"] == os.uname().nodename and out.start["where"]
        assert [out.results[str(i)]["ok"] for i in range(len(models))] == [True, True, False, True, True]
        assert out.results["0"]["summary"]["mean_ms"] == pytest.approx(1207.33)
        assert runner.state()["time"] is not None
        batches = Path(transport.workdir) / "batches"  # the device is this host in both tests
        assert batches.is_dir() and list(batches.iterdir()) == []  # each script removed itself
    finally:
        transport.close()
    graphs = [ln for ln in (tmp_path / "argv.log").read_text().splitlines() if ln.startswith("--graph=")]
    assert len(graphs) == len(models) and all(g.endswith(m.name) for g, m in zip(graphs, models))
    assert not canary.exists() and _no_pwned_files(tmp_path)


def test_benchmark_model_batch_over_ssh(sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.host_key_line())
    profile = _remote_profile(tmp_path, "ssh", {"host": sshd.host, "port": sshd.port, "user": sshd.user,
                                                "key_file": str(sshd.user_key), "known_hosts": str(known_hosts)})
    _batch_over(profile, tmp_path)


def test_benchmark_model_batch_over_adb(tmp_path):
    pytest.importorskip("adb_shell", reason="the adb transport needs adb-shell, a latbench dependency")
    from adb_peer import AdbPeer, write_keypair

    key = tmp_path / "keys" / "adbkey"
    write_keypair(key)
    peer = AdbPeer(shell_cwd=tmp_path, keys=[Path(f"{key}.pub").read_bytes()]).start()
    try:
        profile = _remote_profile(tmp_path, "adb", {"address": f"127.0.0.1:{peer.port}", "adb_key": str(key),
                                                    "connect_timeout_s": 5, "auth_timeout_s": 2, "cpu_mask": "1"})
        _batch_over(profile, tmp_path)
    finally:
        peer.stop()
    assert peer.errors == []


def test_a_batch_cut_anywhere_keeps_only_models_it_finished(bm_setup, tmp_path):
    """A connection lost mid-batch hands on what was printed, cut at any byte: the runner keeps
    exactly the models whose frames were complete, with the results the whole run gives them,
    and never a false failure from a half-printed end line."""
    from latbench.errors import DeviceError

    fake, _ = bm_setup
    profile = _profile("cut", "benchmark_model", "litert", "tflite", tmp_path, runtime_options={"binary": str(fake)})
    transport, runner = _open(profile)
    models, _ = _nasty_models(tmp_path / "models")
    items = [BatchItem(f"m{i}", m) for i, m in enumerate(models)]
    whole = runner.run_batch(items)
    real_run = transport.run

    def cut_at(where):  # the batch runs; the connection drops after `where(stdout)` bytes
        def lost(argv, timeout_s):
            stdout = real_run(argv, timeout_s).stdout
            err = DeviceError("lost the connection (test)")
            err.partial_stdout = stdout[:where(stdout)]  # mid-line too: the runner must cope
            raise err
        return lost

    kept = set()
    wheres = [lambda out, k=k: len(out) * k // 40 for k in range(1, 40)]
    wheres += [lambda out, w=w, d=d: out.find(w) + d for w, d in ((" end m1 rc=", 5), (" end m1 rc=", 9),
                                                                   (" end m3", 7))]
    for where in wheres:
        transport.run = cut_at(where)
        try:
            out = runner.run_batch(items)
        except DeviceError:  # nothing whole was printed yet: nothing to keep
            continue
        assert out.error and "lost the connection" in out.error
        for item_id, rec in out.results.items():
            assert rec == whole.results[item_id], item_id
        kept.add(len(out.results))
    assert kept - {0, len(items)}  # some cuts kept part of the batch


def test_a_model_that_filled_the_disk_is_not_taken_and_stops_the_batch(bm_setup, tmp_path):
    """A tool writing its result file onto a full disk leaves it cut short: that model's timings
    are not stored, and the batch error names the full disk (collect stops on it)."""
    from latbench.collect import _disk_full

    fake, _ = bm_setup
    profile = _profile("full", "benchmark_model", "litert", "tflite", tmp_path, runtime_options={"binary": str(fake)})
    transport, runner = _open(profile)
    models, _ = _nasty_models(tmp_path / "models")
    items = [BatchItem(f"m{i}", m) for i, m in enumerate(models)]
    real_run = transport.run

    def disk_fills_in_m1(argv, timeout_s):
        res = real_run(argv, timeout_s)
        begin = res.stdout.find(" begin m1")
        line_end = res.stdout.index("\n", begin) + 1
        note = "sh: 1: cannot create results/1.csv: No space left on device\n"
        return dataclasses.replace(res, stdout=res.stdout[:line_end] + note + res.stdout[line_end:])

    transport.run = disk_fills_in_m1
    out = runner.run_batch(items)
    assert set(out.results) == {"m0"} and _disk_full(out.error)
    assert out.error.startswith("the device's disk filled while benchmark_model ran model m1: sh: 1: cannot create")


# ---- why a model failed: the cause, not the closing line; signals; time limits -----------------

@pytest.mark.parametrize("name, cause, hint", [
    ("trt_failed.txt", 'ModelImporter.cpp:771: ERROR: builtin_op_importers.cpp:5404 In function '
                       'importFallbackPluginImporter: [8] Assertion failed: creator && "Plugin not found"',
     "an op TensorRT cannot import"),
    ("bm_failed.txt", "Could not open '/data/local/tmp/latbench/models/missing.tflite'.", "missing or unreadable"),
])
def test_a_failed_tool_is_reported_by_its_first_specific_error_line(name, cause, hint):
    from latbench.runners.parsing import error_line

    said = error_line(fixture(name))
    assert said.startswith(cause + "; ") and hint in said
    for closing in ("&&&& FAILED", "Benchmarking failed", "Engine set up failed", "[E]", "ERROR: Could"):
        assert closing not in said  # no closing banner, no log prefix


def test_only_closing_lines_still_say_something():
    from latbench.runners.parsing import error_line

    text = ("[11/22/2024-10:00:00] [I] [TRT] Loaded engine size: 1 MiB, error: none\n"
            "[11/22/2024-10:00:00] [E] Engine set up failed\n"
            "&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec --loadEngine=x.engine")
    assert error_line(text) == "Engine set up failed"  # an [I] line is never the error
    assert error_line("2018-09-10 12:36:15.624324: I tensorflow/x.cc:1] Error reporter: stderr\n"
                      "ERROR: Failed to allocate tensors!\nERROR: Benchmarking failed.") == \
        "Failed to allocate tensors!"
    assert error_line("INFO: Running benchmark for at least 50 iterations", fallback=False) == ""


def _trt_runner(tmp_path: Path, fake: Path, **kw):
    profile = _profile("orin", "trtexec", "tensorrt", "onnx", tmp_path, runtime_options={"binary": str(fake)},
                       protocol=kw.pop("protocol", Protocol(warmup_runs=2, warmup_s=0.1, runs=5, min_time_s=0.5,
                                                            max_runs=40)), **kw)
    return _open(profile)[1]


@pytest.mark.parametrize("rc, said", [
    (137, "benchmark_model was killed by SIGKILL (signal 9: out of memory?"),
    (139, "benchmark_model crashed (SIGSEGV, signal 11"),
    (134, "benchmark_model aborted (SIGABRT, signal 6"),
    (255, "benchmark_model exited with 255: Running benchmark"),  # exit(-1), not a signal
])
def test_a_tool_killed_by_a_signal_says_so(bm_setup, tmp_path, rc, said):
    from latbench.runners.script import ItemOutput

    fake, _ = bm_setup
    _, runner = _open(_profile("sig", "benchmark_model", "litert", "tflite", tmp_path,
                               runtime_options={"binary": str(fake)}))
    # the shell prints "Killed" / "Segmentation fault" on its own stderr: the tool's output just stops
    message = runner.failure(ItemOutput("0", "INFO: Loaded model m.tflite\nINFO: Running benchmark for at "
                                             "least 50 iterations", rc))
    assert message.startswith(said)
    if rc != 255:
        assert "Running benchmark" not in message and "exited with" not in message


def test_a_tool_that_segfaults_in_a_real_batch(latbench_home, tmp_path):
    fake = tmp_path / "benchmark_model"
    fake.write_text("#!/bin/sh\necho 'INFO: Running benchmark for at least 50 iterations'\n"
                    "case \"$*\" in *oom*) kill -KILL $$ ;; *) kill -SEGV $$ ;; esac\n")
    fake.chmod(0o755)
    models = [tmp_path / "oom.tflite", tmp_path / "crash.tflite"]
    for m in models:
        m.write_bytes(b"x")
    _, runner = _open(_profile("sig", "benchmark_model", "litert", "tflite", tmp_path,
                               runtime_options={"binary": str(fake)}))
    out = runner.run_batch([BatchItem(m.stem, m) for m in models])
    assert out.results["oom"]["error"].startswith("benchmark_model was killed by SIGKILL (signal 9")
    assert out.results["crash"]["error"].startswith("benchmark_model crashed (SIGSEGV")


def test_old_busybox_timeout_with_dash_t_and_its_sigterm_exit_is_the_time_limit(tmp_path):
    """busybox < 1.30 only takes `timeout -t SECS`; every busybox ends the command with SIGTERM,
    so the exit status is 143, not coreutils' 124."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    (fakebin / "timeout").write_text("""#!/bin/sh
[ "$1" = -t ] || { echo "timeout: invalid option" >&2; exit 1; }
secs=$2; shift 2
"$@" & pid=$!
( sleep "$secs"; kill -TERM $pid 2>/dev/null ) & watcher=$!
wait $pid; rc=$?
kill $watcher 2>/dev/null
exit $rc
""")
    (fakebin / "timeout").chmod(0o755)
    nonce = new_nonce()
    items = [ScriptItem("slow", [run_line(["sleep", "5"], 1)]), ScriptItem("quick", [run_line(["true"], 1)])]
    script = tmp_path / "batch.sh"
    script.write_text(batch_script(items, nonce=nonce))
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}"}
    res = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=60, env=env)
    frames = split_output(res.stdout, nonce)
    assert frames.done and frames.items["slow"].rc == 124 and frames.items["quick"].rc == 0


# ---- summary-only results: percentiles in order, a spread that is known or says it is not ------

@pytest.mark.parametrize("log", ["trt10_summary.txt", "ort_2019_stdout.txt"])
def test_a_summary_without_runs_keeps_its_percentiles_in_order(log):
    import math

    from latbench.measurement import ReportedMeasurement

    if log.startswith("trt"):
        rec = trt.parse_result(fixture(log), "", "gpu_compute", Protocol())
    else:
        rec = ort.parse_result(fixture(log), "", Protocol())
    m = ReportedMeasurement.from_summary("k", rec["summary"])
    s = rec["summary"]
    assert s.get("min_ms", m.p10_ms) <= m.p10_ms <= m.median_ms <= m.p90_ms <= s.get("max_ms", m.p90_ms)
    assert m.iqr_ms >= 0 and math.isfinite(m.iqr_ms)
    if log.startswith("trt"):  # the mean (6.504) lies above the median (6.482): no std to spread it by
        assert m.median_ms == pytest.approx(6.48242) and m.p90_ms == pytest.approx(6.58594)
        assert m.p10_ms < 6.48242


def test_a_summary_with_only_a_mean_has_an_unknown_spread_not_a_steady_one():
    import math

    from latbench.measurement import ReportedMeasurement

    # trtexec's example: mean 7.0 above p90; before, p10 = q1 = the mean and the IQR was negative
    m = ReportedMeasurement.from_summary("k", {"count": 152, "mean_ms": 7.0, "median_ms": 6.48,
                                               "percentiles_ms": {"90": 6.586, "99": 9.5}})
    assert m.p10_ms <= m.median_ms <= m.p90_ms and m.p10_ms == 6.48
    assert math.isnan(m.iqr_ms) and math.isnan(m.relative_iqr) and not m.spread_known
    bare = ReportedMeasurement.from_summary("k", {"count": 100, "mean_ms": 4.8})  # perf_test, no -s
    assert bare.p10_ms == bare.median_ms == bare.p90_ms == 4.8 and math.isnan(bare.iqr_ms)
    with_range = ReportedMeasurement.from_summary("k", {"count": 100, "mean_ms": 4.8, "min_ms": 4.0,
                                                        "max_ms": 9.0})
    assert (with_range.p10_ms, with_range.p90_ms) == (4.0, 9.0)  # the printed range, not a guess
    # a std still gives normal estimates, now around the printed median and never inverted
    skewed = ReportedMeasurement.from_summary("k", {"count": 50, "mean_ms": 7.0, "std_ms": 0.1,
                                                    "median_ms": 6.48, "std_kind": "sample"})
    assert skewed.p10_ms < 6.48 < skewed.p90_ms and skewed.iqr_ms > 0


# ---- what collect stores of a runner's extra ---------------------------------------------------

def test_collect_stores_the_runners_extra_and_warns_of_a_partial_delegation(latbench_home, caplog):
    import json
    import logging
    import math
    import sqlite3

    from latbench.collect import Collector, Report
    from latbench.profiles import load_profile
    from latbench.runners.base import BatchOutput
    from latbench.spaces import get_space
    from latbench.store import Store

    profile = load_profile("local")
    ops = get_space("fbnet-cifar").ops()[:3]
    with Store(latbench_home / "latbench.db") as store, Collector(profile, store) as col:
        plan = col.plan(ops)
        report = Report()
        output = BatchOutput(start={"runtime": "litert"}, end={"state": {}}, results={
            "0": {"ok": True, "summary": {"count": 40, "mean_ms": 3.0, "std_ms": 0.2},
                  "extra": {"gpu_delegated": "partial (5 kernels)", "init_ms": 12.5,
                            "op_profile": {"Run Order": [{"name": "conv"}]}}},
            "1": {"ok": True, "samples_ms": [1.0, 1.1, 1.2], "extra": {"protocol_met": False, "runs_kept": 3}},
            "2": {"ok": True, "summary": {"count": 100, "mean_ms": 4.8}},  # a spread nobody printed
        })
        ids = {str(i): (op.key, 0) for i, op in enumerate(ops)}
        with caplog.at_level(logging.INFO, logger="latbench.collect"):
            col.store_output(plan, ids, output, 0.0, None, report)
    runner = json.loads(sqlite3.connect(latbench_home / "latbench.db").execute(
        "SELECT runner FROM batches").fetchone()[0])
    assert runner["extra"][ops[0].key] == {"gpu_delegated": "partial (5 kernels)", "init_ms": 12.5}
    assert runner["extra"][ops[1].key] == {"protocol_met": False, "runs_kept": 3}
    assert runner["partial_delegation"] == {ops[0].key: "gpu: partial (5 kernels)"}
    assert runner["protocol_not_met"] == [ops[1].key]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "ran only partly on the delegate" in said and ops[0].key in said
    assert "fewer runs than protocol.runs" in said and ops[1].key in said
    # ... and the collection's summary says it once, where the batches' logs scroll away
    from latbench.cli.collect import _trust_notes

    assert report.partly_delegated == {ops[0].key: "gpu: partial (5 kernels)"}
    assert report.short_of_protocol == [ops[1].key]
    assert report.to_dict()["partly_delegated"] == report.partly_delegated
    notes = "\n".join(_trust_notes(report, profile))
    assert f"1 model ran only partly on the delegate and partly on the CPU (the first {ops[0].key}" in notes
    assert "1 model kept fewer runs than protocol.runs" in notes and ops[1].key in notes
    # an unknown spread is left out of the noise figures instead of counting as steady (or NaN)
    assert report.measured == 3 and len(report.relative_iqrs) == 2
    assert all(math.isfinite(r) for r in report.relative_iqrs)


# ---- trtexec: a broken cached engine, a bounded --exportTimes ----------------------------------

def _fake_trtexec_engines(path: Path, log: Path, records: int = 0) -> Path:
    """A trtexec stand-in whose engines must hold "engine" to load (a file cut short does not);
    a model named *broken* fails its build after writing part of the engine. With `records`, it
    exports that many queries."""
    summary, times = FIXTURES / "trt8_summary.txt", FIXTURES / "trt8_times.json"
    export = (f'awk -v n={records} \'BEGIN {{ print "["; for (i = 0; i < n; i++) '
              f'printf "%s{{ \\"computeMs\\" : %d, \\"latencyMs\\" : 1 }}\\n", (i ? ", " : "  "), i; print "]" }}\''
              if records else f"cat {shlex.quote(str(times))}")
    path.write_text(f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(log))}
out=
for a in "$@"; do
  case $a in
    --help) echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help"; exit 0 ;;
    --onnx=*broken*) echo "[E] [TRT] ModelImporter.cpp:771: ERROR: builtin_op_importers.cpp:5404 Assertion failed: creator && \\"Plugin not found\\""; broken=1 ;;
    --saveEngine=*) engine=${{a#--saveEngine=}} ;;
    --loadEngine=*) if [ "$(cat "${{a#--loadEngine=}}")" != engine ]; then
        echo "[E] Error[1]: [stdArchiveReader.cpp::StdArchiveReader::40] Error Code 1: Serialization (Serialization assertion stdVersionRead == serializationVersion failed.Version tag does not match.)"
        echo "[E] Engine deserialization failed"
        echo "&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec $*"; exit 1; fi ;;
    --exportTimes=*) out=${{a#--exportTimes=}} ;;
  esac
done
if [ -n "$engine" ]; then
  if [ -n "$broken" ]; then printf eng > "$engine"; echo "&&&& FAILED TensorRT.trtexec"; exit 1; fi
  echo engine > "$engine"
fi
[ -n "$out" ] && {export} > "$out"
cat {shlex.quote(str(summary))}
""")
    path.chmod(0o755)
    return path


def test_trtexec_rebuilds_a_cached_engine_that_does_not_load(latbench_home, tmp_path):
    log = tmp_path / "argv.log"
    runner = _trt_runner(tmp_path, _fake_trtexec_engines(tmp_path / "trtexec", log))
    model = tmp_path / "op.onnx"
    model.write_bytes(b"onnx bytes")
    engine = Path(runner.transport.workdir) / "engines" / runner.engine_name(BatchItem("0", model))
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_text("eng")  # a build that was cut short, left by an older latbench
    first = runner.run_batch([BatchItem("0", model)]).results["0"]
    assert first["ok"] and len(first["samples_ms"]) == 8 and first["extra"]["engine_rebuilt"] is True
    assert engine.read_text() == "engine\n" and not Path(f"{engine}.part").exists()
    second = runner.run_batch([BatchItem("0", model)]).results["0"]
    assert second["ok"] and "engine_rebuilt" not in second["extra"]
    calls = [c for c in log.read_text().splitlines() if "--help" not in c]
    assert ["--loadEngine=" in c for c in calls] == [True, False, True]
    assert f"--saveEngine={engine}.part" in calls[1].split()


def test_trtexec_a_failed_build_leaves_no_engine_behind(latbench_home, tmp_path):
    log = tmp_path / "argv.log"
    runner = _trt_runner(tmp_path, _fake_trtexec_engines(tmp_path / "trtexec", log))
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"onnx bytes")
    engine = Path(runner.transport.workdir) / "engines" / runner.engine_name(BatchItem("0", model))
    for _ in range(2):
        rec = runner.run_batch([BatchItem("0", model)]).results["0"]
        assert not rec["ok"] and '"Plugin not found"; the model has an op TensorRT cannot import' in rec["error"]
        assert not engine.exists() and not Path(f"{engine}.part").exists()
    calls = [c for c in log.read_text().splitlines() if "--help" not in c]
    assert len(calls) == 2 and all("--onnx=" in c for c in calls)  # built again, never loaded half an engine


def test_trtexec_a_failed_rebuild_says_why_the_build_failed(latbench_home, tmp_path):
    runner = _trt_runner(tmp_path, _fake_trtexec_engines(tmp_path / "trtexec", tmp_path / "argv.log"))
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"onnx bytes")
    engine = Path(runner.transport.workdir) / "engines" / runner.engine_name(BatchItem("0", model))
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_text("eng")
    rec = runner.run_batch([BatchItem("0", model)]).results["0"]
    assert not rec["ok"] and "Plugin not found" in rec["error"] and "Serialization" not in rec["error"]
    assert not engine.exists()


def test_trtexec_prints_a_bounded_export_and_keeps_the_same_samples(latbench_home, tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "EXPORTED_WARMUP_MARGIN", 10)
    protocol = Protocol(warmup_runs=2, warmup_s=0.1, runs=5, min_time_s=0.5, max_runs=40)
    runner = _trt_runner(tmp_path, _fake_trtexec_engines(tmp_path / "trtexec", tmp_path / "argv.log", 500),
                         protocol=protocol)
    assert runner.export_limit() == 40 + 2 * 2 + 10
    model = tmp_path / "op.onnx"
    model.write_bytes(b"onnx bytes")
    nonce = new_nonce()
    item = runner.item(BatchItem("0", model), str(model), 60)
    res = subprocess.run(["/bin/sh", "-c", batch_script([item], nonce=nonce, workdir=runner.transport.workdir,
                                                        prelude=runner.prelude())],
                         capture_output=True, text=True, timeout=60)
    out = split_output(res.stdout, nonce).items["0"]
    printed = out.files["times"]
    assert sum("{" in ln for ln in printed.splitlines()) == 54 and len(printed) < 54 * 60
    whole = (Path(runner.transport.workdir) / "results" / "0.times.json").read_text()
    assert sum("{" in ln for ln in whole.splitlines()) == 500
    rec = runner.parse_item(out)
    assert rec["samples_ms"] == trt.parse_result(out.text, whole, "gpu_compute", protocol)["samples_ms"]
    assert rec["samples_ms"] == [float(i) for i in range(40)] and rec["extra"]["exported_records"] == 500


def test_trtexec_7_warmups_are_still_dropped_from_a_cut_export():
    log, times = fixture("trt7_host_latency.txt"), fixture("trt7_times.json")  # 3 warm-up + 10 timed
    protocol = Protocol(warmup_runs=0, warmup_s=0, runs=3, min_time_s=0, max_runs=4)
    whole = trt.parse_result(log, times, "latency", protocol)
    lines = times.splitlines()
    cut = "\n".join(lines[:1 + 3 + 4] + [f"{trt.RECORDS_TRAILER} 13"])  # "[", 3 warm-up, 4 timed
    rec = trt.parse_result(log, cut, "latency", protocol)
    assert rec["samples_ms"] == whole["samples_ms"] and len(rec["samples_ms"]) == 4


def test_busybox_timeout_ending_a_model_is_the_time_limit(bm_setup, tmp_path, monkeypatch):
    """A real busybox `timeout` (1.30+ takes `timeout SECS`) kills with SIGTERM: exit 143."""
    if not shutil.which("busybox"):
        pytest.skip("busybox is not installed")
    fakebin = tmp_path / "bb"
    fakebin.mkdir()
    (fakebin / "timeout").symlink_to(shutil.which("busybox"))
    monkeypatch.setenv("PATH", f"{fakebin}:{os.environ['PATH']}")
    fake, _ = bm_setup
    _, runner = _open(_profile("bb", "benchmark_model", "litert", "tflite", tmp_path,
                               runtime_options={"binary": str(fake)}))
    monkeypatch.setattr(runner, "model_limit_s", lambda n: 1.0)
    slow = tmp_path / "slow.tflite"
    slow.write_bytes(b"x")
    rec = runner.run_batch([BatchItem("0", slow)]).results["0"]
    assert rec["error"] == "benchmark_model did not finish within the per-model time limit"
