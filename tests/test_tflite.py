"""TFLite: ops and networks converted with litert-torch compute what torch computes, in phone
layout (NHWC, no layout transposes); they are cached by key, timed by the bundled runner with
LiteRT, and collected into the store; a model the converter cannot handle is skipped with its
reason."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latbench import home  # noqa: E402
from latbench.errors import ExportError  # noqa: E402
from latbench.export import cache_path, export, exporter_tag  # noqa: E402
from latbench.modules import build_module, build_network, example_input  # noqa: E402
from latbench.ops import OpSpec  # noqa: E402
from latbench.spaces import get_space  # noqa: E402

EXTRA = "needs the tflite extra: pip install -e .[tflite]"
SPACE = get_space("fbnet-cifar")

# One op of each kind, both skip variants, and both block variants (plain; grouped + shuffled).
OPS = [
    OpSpec("conv_bn_relu", 3, 32, 32, 16, kernel=3, stride=1),
    OpSpec("conv_bn_relu", 352, 4, 4, 1504, kernel=1),
    OpSpec("fbnet_block", 24, 32, 32, 32, kernel=5, stride=2, expansion=6),
    OpSpec("fbnet_block", 16, 32, 32, 16, kernel=3, stride=1, expansion=1, groups=2),
    OpSpec("skip", 24, 32, 32, 32, kernel=1, stride=2, activation="none"),
    OpSpec("skip", 32, 16, 16, 32, kernel=1, stride=1, activation="none"),
    OpSpec("avgpool", 1504, 4, 4, 1504, kernel=4, activation="none"),
    OpSpec("fc", 1504, 1, 1, 100, activation="none"),
]
COLLECT_OPS = SPACE.ops()[:3]  # stem, head conv, avgpool: all in OPS, so in the session cache
NETWORK = SPACE.network((1, 8, 3, 5, 0, 2, 8, 7, 4, 6, 1, 3, 5, 8, 2, 0, 7, 6, 1, 4, 3, 5))


def need_tflite() -> None:
    pytest.importorskip("ai_edge_litert", reason=EXTRA)
    pytest.importorskip("litert_torch", reason=EXTRA)


@pytest.fixture(scope="session")
def tflite_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with OPS converted once per session (converting is the slow part)."""
    need_tflite()
    cache = tmp_path_factory.mktemp("tflite-cache")
    for op in OPS:
        export(op, "tflite", cache_dir=cache)
    return cache


@pytest.fixture
def tflite_home(latbench_home: Path, tflite_cache: Path) -> Path:
    shutil.copytree(tflite_cache, latbench_home / "models")
    return latbench_home


@pytest.fixture
def tflite_profile(make_profile) -> str:
    """A fast local LiteRT profile (the bundled local-tflite, with the fast test protocol)."""
    return make_profile("test-tflite", runtime="litert", format="tflite",
                        runtime_options={"xnnpack": True})


def torch_out(module, x):
    with torch.no_grad():
        return module(x).numpy()


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(scale, 1e-6))


# ---- conversion ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS, ids=lambda op: op.key)
def test_litert_output_equals_torch_for_single_ops(op, tflite_cache):
    from latbench.tflite import op_names, run_tflite, to_nhwc
    from ai_edge_litert.interpreter import Interpreter

    path = export(op, "tflite", cache_dir=tflite_cache)
    x = example_input(op.input_shape, seed=123)  # an input the exporter's own check never saw
    expected = torch_out(build_module(op), x)
    assert_close(run_tflite(path, x.numpy()), expected)
    assert np.abs(expected).max() > 0
    # phone layout: NHWC at the boundary, and no TRANSPOSE but the one a channel shuffle needs
    interp = Interpreter(model_path=str(path))
    assert tuple(interp.get_input_details()[0]["shape"]) == to_nhwc(x.numpy()).shape
    assert tuple(interp.get_output_details()[0]["shape"]) == to_nhwc(expected).shape
    shuffles = 1 if op.kind == "fbnet_block" and op.groups > 1 else 0
    assert op_names(path).count("TRANSPOSE") == shuffles


@pytest.mark.slow
def test_litert_output_equals_torch_for_a_whole_network(tmp_path):
    need_tflite()
    from latbench.tflite import op_names, run_tflite

    path = export(NETWORK, "tflite", cache_dir=tmp_path)
    x = example_input(NETWORK.ops[0].input_shape, seed=7)
    expected = torch_out(build_network(NETWORK), x)
    assert expected.shape == (1, SPACE.num_classes)
    assert_close(run_tflite(path, x.numpy()), expected)
    names = op_names(path)
    assert names.count("TRANSPOSE") == sum(op.kind == "fbnet_block" and op.groups > 1 for op in NETWORK.ops)
    assert names.count("DEPTHWISE_CONV_2D") == sum(op.kind == "fbnet_block" for op in NETWORK.ops)


def test_a_cached_file_is_reused_by_key_without_converting(tflite_cache, tmp_path, monkeypatch):
    import latbench.tflite

    op = OPS[0]
    first = export(op, "tflite", cache_dir=tflite_cache)
    assert first == cache_path(op, "tflite", exporter_tag("tflite"), tflite_cache)
    assert first.parent.name == exporter_tag("tflite") and "litert-torch" in first.parent.name

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(latbench.tflite, "export_tflite", no_conversion)
    assert export(op, "tflite", cache_dir=tflite_cache) == first
    with pytest.raises(ExportError, match="converted again"):  # another key is not in the cache
        export(OPS[1], "tflite", cache_dir=tmp_path)


def test_a_module_the_converter_cannot_handle_is_an_export_error_with_the_reason(tmp_path):
    need_tflite()
    from latbench.tflite import convert_module

    class NonZero(torch.nn.Module):  # data-dependent output shape: no static TFLite graph
        def forward(self, x):
            return torch.nonzero(x > 0).float()

    with pytest.raises(ExportError) as info:
        convert_module(NonZero(), torch.randn(1, 16), tmp_path / "m.tflite", label="nonzero-op")
    assert "litert-torch cannot convert nonzero-op" in info.value.message
    assert "nonzero" in info.value.message.split("nonzero-op", 1)[1]  # the reason names the torch op
    assert "\n" not in info.value.message and info.value.hint
    assert not (tmp_path / "m.tflite").exists()


def test_without_the_converter_export_says_to_install_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # `import litert_torch` now fails
    with pytest.raises(ExportError) as info:
        export(OPS[0], "tflite", cache_dir=tmp_path)
    assert "pip install -e .[tflite]" in info.value.hint


def installed_only(monkeypatch, dists: dict[str, str]) -> None:
    """Package metadata as if only `dists` (name -> version) were installed."""
    import importlib.metadata as metadata

    def version(name: str) -> str:
        if name not in dists:
            raise metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(metadata, "version", version)


def test_the_nightly_converter_names_the_cache_instead_of_counting_as_missing(monkeypatch):
    """litert-torch-nightly installs the same `litert_torch` under another name: .tflite export
    said "litert-torch is not installed" with it, and nothing could be converted."""
    from latbench.tflite import converter_version

    installed_only(monkeypatch, {"litert-torch-nightly": "0.11.0.dev20261026", "litert-converter": "0.5.0"})
    assert converter_version() == "litert-torch0.11.0.dev20261026-conv0.5.0-nhwc1"
    installed_only(monkeypatch, {"litert-torch": "0.10.0"})  # before the separate backend
    assert converter_version() == "litert-torch0.10.0-nhwc1"
    installed_only(monkeypatch, {"litert-converter": "0.5.0"})
    with pytest.raises(ExportError, match="litert-torch is not installed"):
        converter_version()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (every write: disk full)")
def test_a_full_disk_is_an_error_of_the_export_not_the_end_of_the_process():
    """The converter's native writer ended the whole process on a full disk ("LLVM ERROR: IO
    failure on output stream", exit 1): a collection died without its one-line error, and the
    half-written file stayed in the cache folder, keeping the disk full. Run in a process of its
    own, which that ended."""
    need_tflite()
    code = ("import errno, torch; from pathlib import Path; from latbench.tflite import convert_module\n"
            "try:\n"
            "    convert_module(torch.nn.Linear(16, 10).eval(), torch.randn(1, 16), Path('/dev/full'))\n"
            "except OSError as exc:\n"
            "    print('OSError', errno.errorcode[exc.errno])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "LLVM ERROR" not in out.stderr, out.stderr[-500:]
    assert out.stdout.strip().splitlines()[-1:] == ["OSError ENOSPC"]


def test_a_process_started_with_stderr_closed_converts_too(tmp_path):
    """`latbench collect ... 2>&-` (or a service manager): sys.stderr is None, and hushing the
    converter's chatter raised AttributeError, so every .tflite export failed."""
    need_tflite()
    code = ("import sys; from pathlib import Path; from latbench.export import export; "
            "from latbench.ops import OpSpec\n"
            "assert sys.stderr is None\n"
            f"path = export(OpSpec('fc', 16, 1, 1, 10, activation='none'), 'tflite', cache_dir=Path({str(tmp_path)!r}))\n"
            "print(path.suffix, path.stat().st_size > 0)")
    out = subprocess.run(["sh", "-c", f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} 2>&-"],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1:] == [".tflite True"], out.stdout


def test_commands_that_do_not_convert_do_not_import_the_converter():
    code = ("import sys, latbench.export, latbench.collect, latbench.tflite\n"
            "try:\n    latbench.export.exporter_tag('tflite')\nexcept Exception:\n    pass\n"
            "print([m for m in ('litert_torch', 'tensorflow', 'ai_edge_litert', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- the runner ----------------------------------------------------------------------------

def open_runner(name: str):
    from latbench.profiles import load_profile
    from latbench.runners.base import make_runner
    from latbench.transports import open_transport

    profile = load_profile(name)
    transport = open_transport(profile)
    transport.connect()
    return profile, make_runner(transport, profile)


def test_the_runner_measures_a_tflite_batch_and_names_the_interpreter(tflite_cache, tflite_profile):
    import ai_edge_litert
    from latbench.runners.base import BatchItem

    profile, runner = open_runner(tflite_profile)
    info = runner.info()
    assert info["runtimes"]["litert"] == {"package": "ai_edge_litert", "version": ai_edge_litert.__version__}
    assert runner.runtime_version(info) == f"ai_edge_litert {ai_edge_litert.__version__}"
    paths = [export(op, "tflite", cache_dir=tflite_cache) for op in (OPS[0], OPS[7], OPS[3])]
    out = runner.run_batch([BatchItem(f"m{i}", p) for i, p in enumerate(paths)])
    assert out.error is None, out.error
    assert out.start["runtime"] == "litert" and out.start["runtime_package"] == "ai_edge_litert"
    assert out.start["runtime_version"] == ai_edge_litert.__version__
    assert list(out.results) == ["m0", "m1", "m2"]
    for rec in out.results.values():
        assert rec["ok"] is True, rec
        assert profile.protocol.runs <= len(rec["samples_ms"]) <= profile.protocol.max_runs
        assert all(s > 0 for s in rec["samples_ms"])


def test_xnnpack_option_turns_the_delegate_on_and_off(tflite_cache):
    from latbench.runners import pyrunner

    path = str(export(OPS[2], "tflite", cache_dir=tflite_cache))

    def node_names(options):
        model = pyrunner._LiteModel(path, 1, options)
        model()
        return [d["op_name"] for d in model.interpreter._get_ops_details()]

    assert "DELEGATE" in node_names({"xnnpack": True})
    assert "DELEGATE" in node_names({})  # on by default, as on phones
    assert "DELEGATE" not in node_names({"xnnpack": False})
    with pytest.raises(ValueError, match="unknown litert runtime option 'xnnpak'"):
        pyrunner._LiteModel(path, 1, {"xnnpak": True})


# ---- collection ----------------------------------------------------------------------------

def collect(profile_name: str, items, rounds: int | None = None):
    from latbench.collect import Collector
    from latbench.profiles import load_profile
    from latbench.store import Store

    profile = load_profile(profile_name)
    with Store(home.db_path()) as store, Collector(profile, store, rounds=rounds) as collector:
        plan = collector.plan(items)
        report = collector.run(plan)
        failures = store.failures(plan.context)
        rows = store.table(plan.context)
    return plan, report, failures, rows


def test_the_bundled_local_tflite_profile_runs_litert_with_xnnpack():
    from latbench.profiles import load_profile

    profile = load_profile("local-tflite")
    assert (profile.transport, profile.runner, profile.runtime, profile.format) == (
        "local", "python", "litert", "tflite")
    assert profile.threads == 1 and profile.runtime_options == {"xnnpack": True}


def test_cli_collect_fills_a_tflite_table_with_the_interpreter_version(tflite_home, tflite_profile,
                                                                      capsys, monkeypatch):
    import sqlite3

    import ai_edge_litert
    from latbench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["latbench"])
    code = main(["collect", "--device", tflite_profile, "--limit", str(len(COLLECT_OPS)), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["measured"] == 2 * len(COLLECT_OPS) and summary["failed"] == {}
    assert summary["runtime"] == f"ai_edge_litert {ai_edge_litert.__version__}"
    with sqlite3.connect(home.db_path()) as conn:
        rows = conn.execute("SELECT key, runtime, runtime_version, median_ms FROM measurements").fetchall()
        runners = [json.loads(r) for (r,) in conn.execute("SELECT runner FROM batches")]
    assert {k for k, *_ in rows} == {op.key for op in COLLECT_OPS}
    assert {(rt, v) for _, rt, v, _ in rows} == {("litert", f"ai_edge_litert {ai_edge_litert.__version__}")}
    assert all(m > 0 for *_, m in rows)
    assert all(r["runtime_package"] == "ai_edge_litert" for r in runners)


def test_an_op_the_converter_rejects_is_recorded_and_the_rest_measured(tflite_home, tflite_profile,
                                                                        monkeypatch):
    """A real converter failure, placed inside collection by swapping one op's module."""
    need_tflite()
    import latbench.export

    good, bad = COLLECT_OPS[0], OpSpec("fc", 8, 1, 1, 4, activation="none")
    real_build = latbench.export.build

    class NonZero(torch.nn.Module):
        def forward(self, x):
            return torch.nonzero(x > 0).float()

    monkeypatch.setattr(latbench.export, "build",
                        lambda item: NonZero() if item == bad else real_build(item))
    plan, report, failures, rows = collect(tflite_profile, [good, bad], rounds=1)
    assert report.measured == 1
    assert report.failed[bad.key].startswith("export: litert-torch cannot convert " + bad.key)
    stage, error = failures[bad.key]
    assert stage == "export" and "nonzero" in error
    assert [r["key"] for r in rows] == [good.key]
