"""`nas search` as users run it: help with examples, one-line errors with exit codes, and a whole
small search that writes its result, exports the full-width network and measures it here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")

QUICK = ["--epochs", "2", "--warmup-epochs", "1", "--width-mult", "0.125", "--input-size", "8",
         "--limit-train", "160"]


def nas(*args: str, home: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LATBENCH_HOME=str(home), COLUMNS="200")
    env.pop("LATBENCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def one_line_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.rstrip("\n").splitlines()  # no blank line before it either
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("nas")
    return lines[0]


def test_help_has_examples(latbench_home):
    done = nas("search", "--help", home=latbench_home)
    assert done.returncode == 0
    assert "nas search --cost latbench:" in done.stdout and "--target-ms" in done.stdout
    top = nas("--help", home=latbench_home)
    assert top.returncode == 0 and "search" in top.stdout


@pytest.mark.parametrize("args, code, words", [
    ([], 2, "--cost"),
    (["--cost", "watts"], 2, "unknown cost spec"),
    (["--cost", "flops", "--form", "hinge"], 2, "add --target-flops"),
    (["--cost", "flops", "--target-ms", "5", "--form", "hinge"], 2, "no --cost is in ms"),
    (["--cost", "latbench:nosuchdevice"], 2, "no fitted predictor for device 'nosuchdevice'"),
    (["--cost", "flops", "--data", "mnist"], 2, "unknown data spec"),
    (["--cost", "flops", "--data", "cifar10:/no/such/dir"], 1, "does not exist"),
    (["--cost", "flops", "--target-flops", "lots"], 2, "not a number"),
    (["--cost", "flops", "--verify"], 2, "--verify-device"),
    (["--cost", "flops", "--epochs", "2"], 2, "no epoch to train theta after --warmup-epochs 2"),
    (["--cost", "flops", "--verify", "--verify-device", "nope"], 2, "unknown device 'nope'"),
    (["--cost", "flops", "--out", "/proc/latbench-results"], 2, "cannot write the results under --out"),
    (["--cost", "flops", "--width-mult", "9"], 2, "width_mult"),
    (["--cost", "flops", "--target-flops", "80M", "--pick", "argmax"], 2, "not used by the fbnet form"),
    (["--cost", "flops", "--pick", "target"], 2, "--pick target needs a target"),
    (["--cost", "flops", "--batch-size", "1"], 2, "--batch-size: must be >= 2"),
])
def test_user_errors_are_one_line(latbench_home, args, code, words):
    done = nas("search", *args, home=latbench_home)
    assert words in one_line_error(done, code)


@pytest.mark.parametrize("option", ["--target-flops", "--lr", "--width-mult"])
def test_an_infinite_number_is_a_usage_error(latbench_home, tmp_path, option):
    # inf passed "> 0": a linear cost term (cost - inf) / inf is NaN, and theta trained to NaN
    done = nas("search", "--cost", "flops", "--form", "linear", "--target-flops", "80M", option, "inf", *QUICK,
               "--samples", "0", "--retrain-epochs", "0", "--no-export", "--out", str(tmp_path / "run"),
               home=latbench_home)
    assert f"argument {option}: must be a finite number" in one_line_error(done, 2)


def test_an_out_that_cannot_take_the_result_fails_before_training(latbench_home, tmp_path):
    (tmp_path / "file").write_text("")
    done = nas("search", "--cost", "flops", "--out", str(tmp_path / "file" / "run"), home=latbench_home)
    assert "cannot write the results under --out" in one_line_error(done, 2)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text("{}")
    done = nas("search", "--cost", "flops", "--out", str(tmp_path / "old"), home=latbench_home)
    assert "already holds the result of a search" in one_line_error(done, 2)
    assert (tmp_path / "old" / "result.json").read_text() == "{}"


def test_a_search_that_stops_leaves_no_empty_result_folder(latbench_home, tmp_path):
    out = tmp_path / "results" / "run"
    done = nas("search", "--cost", "flops", "--data", "cifar10:/no/such/dir", "--out", str(out),
               home=latbench_home)
    assert "does not exist" in one_line_error(done, 1)
    assert not out.exists() and (tmp_path / "results").is_dir()


def test_cuda_without_a_gpu_is_a_usage_error(latbench_home):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    done = nas("search", "--cost", "flops", "--torch-device", "cuda", home=latbench_home)
    assert "CUDA is not available" in one_line_error(done, 2)


@pytest.mark.parametrize("args, match", [
    # torch knows the device type; the search ran on to an internal error after loading the data
    (("--torch-device", "mps"), "--torch-device mps: the search runs on cpu or cuda, not mps"),
    # CE * 0 * ...: theta never gets a gradient, and minutes later the arch is candidate 0 everywhere
    (("--alpha", "0"), "--alpha 0 makes the fbnet loss 0"),
])
def test_a_search_that_cannot_run_as_asked_stops_before_training(latbench_home, args, match):
    done = nas("search", "--cost", "flops", *args, home=latbench_home)
    line = one_line_error(done, 2)
    assert match in line, line


@pytest.mark.slow
def test_search_writes_result_exports_and_verifies(latbench_home, fast_profile, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    import onnxruntime as ort

    from latbench import home
    from latbench.spaces import get_space
    from latbench.store import Store

    out = tmp_path / "run"
    done = nas("search", "--cost", "flops", "--cost", "params", "--form", "hinge", "--target-flops", "80M",
               "--target-params", "3M", *QUICK, "--samples", "4", "--pick", "target", "--retrain-epochs", "1",
               "--out", str(out), "--verify", "--verify-device", fast_profile, "--json", home=latbench_home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == json.loads((out / "result.json").read_text())
    space = get_space("fbnet-cifar")
    final = result["final"]
    assert len(final["arch"]) == 22 and final["source"] in ["argmax"] + [f"sample {i}" for i in range(1, 5)]
    assert len(result["samples"]) == 4
    network = space.network(final["arch"])
    assert final["predicted"]["flops"] == pytest.approx(network.flops)
    assert final["predicted"]["params"] == pytest.approx(network.params)
    assert [r["theta_frozen"] for r in result["curves"]] == [True, False]
    assert 0 <= final["retrained"]["accuracy"] <= 1 and 0 <= final["supernet_accuracy"] <= 1
    # the exported network is the full-width one of the space, not the slim trained supernet
    sess = ort.InferenceSession(result["exports"]["onnx"], providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, 32, 32]
    y = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert y.shape == (1, space.num_classes)
    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_litert"):
        assert Path(result["exports"]["tflite"]).stat().st_size > 0
    else:
        assert result["exports"]["tflite"] is None and "tflite" in " ".join(result["exports"]["notes"])
    (verified,) = result["verify"]
    assert verified["device"] == fast_profile and verified["median_ms"] > 0
    with Store(home.db_path()) as store:  # the measurement went through latbench into the store
        ctx = store.latest_context(fast_profile).context
        keys = {row["key"] for row in store.table(ctx)}
    assert network.key in keys
    from nas.command import print_summary

    print_summary(result)  # the table a search without --json prints, from the same result
    shown = " ".join(capsys.readouterr().out.split())
    assert "measured vs predicted (final arch)" in shown and f"onnxruntime {ort.__version__}" in shown
    assert f"{verified['p10_ms']:.4g}-{verified['p90_ms']:.4g}" in shown


def test_a_busy_verify_device_keeps_the_result_and_says_how_to_measure_it(latbench_home, fast_profile, tmp_path):
    """A collection holds the device when the search ends: --verify waits --verify-wait-s, then
    the result is still written, and the message gives the command that measures the arch."""
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    from latbench.locks import device_lock
    from latbench.profiles import load_profile

    out = tmp_path / "run"
    with device_lock(load_profile(fast_profile)):  # this test process is "the other collection"
        done = nas("search", "--cost", "flops", *QUICK, "--samples", "1", "--retrain-epochs", "0", "--no-export",
                   "--out", str(out), "--verify", "--verify-device", fast_profile, "--verify-wait-s", "0.5",
                   home=latbench_home)
    assert done.returncode == 1, done.stderr
    err = " ".join(done.stderr.split())
    assert f"note: {fast_profile} is being measured now, by latbench pid {os.getpid()}" in err  # before training
    assert f"verify on {fast_profile} failed: the hardware of device '{fast_profile}'" in err
    result = json.loads((out / "result.json").read_text())
    arch = "-".join(str(c) for c in result["final"]["arch"])
    assert f"latbench collect --device {fast_profile} --space fbnet-cifar --arch {arch}" in err
    assert result["verify"][0]["device"] == fast_profile and "being measured already" in result["verify"][0]["error"]


def test_human_output_and_no_export(latbench_home, tmp_path):
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    out = tmp_path / "run"
    done = nas("search", "--cost", "flops", *QUICK, "--samples", "1", "--retrain-epochs", "0", "--no-export",
               "--out", str(out), home=latbench_home)
    assert done.returncode == 0, done.stderr
    assert "found archs" in done.stdout and "argmax *" in done.stdout
    err = done.stderr  # each stage's line below the bars of the stage before
    assert err.index("search: epoch 2/2") < err.index("score ...")
    assert "E[cost] flops" in err  # not taken for rich markup
    # the two accuracies are told apart, and how the final arch was chosen is said
    assert "mixture train acc" in err and "one-path test acc" in done.stdout
    assert "'one-path test acc' is each arch alone on the shared weights" in " ".join(err.split())
    assert "final arch: theta's argmax (--pick argmax)" in err
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    result = json.loads((out / "result.json").read_text())
    assert result["final"]["source"] == "argmax" and "retrained" not in result["final"]
    # every setting that changes the found arch is recorded, so the run can be repeated
    assert result["num_samples"] == 1 and result["retrain_epochs"] == 0
    assert result["data"]["limit_train"] == 160 and result["data"]["weight_split"] == 0.8
    assert result["versions"]["torch"] and result["versions"]["latbench"]
    assert int(result["versions"]["torch_threads"]) >= 1  # a seed repeats the search only with as many
    assert result["costs"][0]["predictor"] is None  # flops: no fitted predictor


def test_an_unreachable_target_is_warned_before_and_missed_after(latbench_home, tmp_path):
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    done = nas("search", "--cost", "flops", "--form", "hinge", "--target-flops", "1M", "--alpha", "0.3", *QUICK,
               "--samples", "1", "--retrain-epochs", "0", "--no-export", "--out", str(tmp_path / "run"), "--json",
               home=latbench_home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout stays JSON alone
    err = done.stderr
    assert "warning: --target-flops 1M is below the cheapest network: flops ranges over 22.7M..321.9M" in err
    assert "note: --alpha has no effect with --form hinge" in err
    assert err.index("below the cheapest network") < err.index("search: epoch")
    (target,) = result["targets"]
    assert not target["hit"] and target["relative_miss"] > 20
    assert f"target flops 1M flops: MISSED by {target['relative_miss']:.1%}" in err
    assert result["notes"][0].startswith("warning: --target-flops 1M")


def test_the_summary_says_how_the_final_arch_was_chosen():
    from nas.command import _pick_line

    base = {"pick": "target", "tolerance": 0.05, "samples": [{}, {}, {}]}
    within = _pick_line(base | {"final": {"source": "sample 2", "within_tolerance": True}})
    assert within.startswith("final arch: sample 2, the likeliest of the argmax and 3 draws from theta")
    assert "within --tolerance 5% of every target" in within
    closest = _pick_line(base | {"final": {"source": "argmax", "within_tolerance": False}})
    assert "the closest to the targets" in closest and "none is within --tolerance 5%" in closest
    assert "argmax" in _pick_line(base | {"pick": "argmax", "final": {"source": "argmax"}})
    budget = _pick_line(base | {"pick": "budget", "final": {"source": "sample 2", "within_tolerance": True}})
    assert "sample 2, the likeliest" in budget and "within --tolerance 5% below it (--pick budget)" in budget
    under = _pick_line(base | {"pick": "budget", "final": {"source": "argmax", "within_tolerance": False,
                                                            "under_budget": True}})
    assert "the closest under the targets" in under
    over = _pick_line(base | {"pick": "budget", "final": {"source": "argmax", "within_tolerance": False}})
    assert "the least over the targets" in over and "none is under" in over


def test_a_final_arch_under_its_target_is_not_called_a_miss(capsys):
    from nas.command import print_targets

    def target(predicted, tolerance=0.05):
        return {"spec": "latbench:local", "target": 1.0, "unit": "ms", "predicted": predicted,
                "relative_miss": predicted - 1.0, "tolerance": tolerance,
                "hit": abs(predicted - 1.0) <= tolerance}
    print_targets({"targets": [target(0.7), target(1.3), target(1.02), target(1.01, 0.025)]})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("target latbench:local 1 ms: 30.0% under: final arch predicted 0.7 ms, within")
    assert lines[1].startswith("target latbench:local 1 ms: MISSED by 30.0%: final arch predicted 1.3 ms, over")
    assert lines[2].startswith("target latbench:local 1 ms: hit: final arch predicted 1.02 ms, 2.0% over")
    assert lines[3].endswith("(within --tolerance 2.5%)")  # not rounded to 2% or 3%
    bounds = [{"spec": "latbench:local", "min": 1.1, "max": 3.0}]
    print_targets({"targets": [target(1.3)], "costs": bounds})  # the target is below every arch
    assert capsys.readouterr().err.rstrip().endswith(
        "; no arch can meet it: the cheapest network of the space is predicted 1.1 ms")
    print_targets({"targets": [target(1.03)], "costs": [bounds[0] | {"min": 1.03}]})  # just below it: a hit
    assert capsys.readouterr().err.rstrip().endswith("(within --tolerance 5%)")  # not "hit: ...; no arch can meet it"
    print_targets({"targets": [target(0.7)], "costs": [bounds[0] | {"min": 0.2, "max": 0.9}]})  # above every arch
    assert "every arch meets it: the dearest network of the space is predicted 0.9 ms" in capsys.readouterr().err
    measured = {"targets": [target(0.98)], "verify": [{"device": "local", "median_ms": 2.0}]}
    print_targets(measured)  # predicted within the target, measured twice it: say so
    said = capsys.readouterr().err.rstrip()
    assert said.endswith("measured 2 ms, 100.0% over the target (measured OVER it)")
    assert said.startswith("target latbench:local 1 ms: hit as predicted, MISSED as measured: final arch predicted 0.98 ms")
    print_targets({"targets": [target(0.98)], "verify": [{"device": "local", "median_ms": 1.03}]})
    assert capsys.readouterr().err.startswith("target latbench:local 1 ms: hit: ")  # within --tolerance
    budget = [target(1.02) | {"budget": True, "hit": False}, target(0.97) | {"budget": True, "hit": True}]
    print_targets({"targets": budget})  # --pick budget: 2% over is a miss
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("MISSED by 2.0%: final arch predicted 1.02 ms, over the budget")
    assert lines[1].endswith("3.0% under (at or under the budget, within --tolerance 5% of it)")
