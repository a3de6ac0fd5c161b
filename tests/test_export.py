"""Export: ONNX files that compute what the torch module computes, cached by key."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from latbench import export as export_mod  # noqa: E402
from latbench.errors import ExportError  # noqa: E402
from latbench.export import ONNX_OPSET, export  # noqa: E402
from latbench.modules import build_module, build_network, example_input  # noqa: E402
from latbench.ops import OpSpec  # noqa: E402
from latbench.spaces import get_space  # noqa: E402

# One op of each kind (and both block variants: plain and grouped + shuffled).
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


def ort_run(path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    return sess.run(None, {inp.name: x})[0]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(scale, 1e-6))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.key)
def test_onnx_runtime_output_equals_torch_for_single_ops(op, tmp_path):
    path = export(op, "onnx", cache_dir=tmp_path)
    model = onnx.load(str(path))
    assert {p.key: p.value for p in model.metadata_props}["latbench.key"] == op.key
    assert model.opset_import[0].version == ONNX_OPSET
    # an input the exporter's own check never saw
    x = example_input(op.input_shape, seed=123)
    with torch.no_grad():
        expected = build_module(op)(x).numpy()
    assert_close(ort_run(path, x.numpy()), expected)
    # the output is not trivially zero or the input (a real op ran)
    assert np.abs(expected).max() > 0


def test_onnx_runtime_output_equals_torch_for_a_whole_network(onnx_cache):
    net = get_space("fbnet-cifar").network((7, 5, 3, 1, 8, 6, 4, 2, 0, 8, 1, 3, 5, 7, 8, 2, 4, 6, 1, 8, 3, 5))
    path = export(net, "onnx", cache_dir=onnx_cache)
    x = example_input((1, 3, 32, 32), seed=5)
    with torch.no_grad():
        expected = build_network(net)(x).numpy()
    got = ort_run(path, x.numpy())
    assert got.shape == (1, 100)
    assert_close(got, expected)


def test_same_key_same_weights_same_file_content(tmp_path):
    """Weights are seeded by the key, so a re-export elsewhere computes the same function."""
    op = OPS[2]
    a = export(op, "onnx", cache_dir=tmp_path / "a")
    b = export(op, "onnx", cache_dir=tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()  # byte for byte: nothing of the run in it
    x = example_input(op.input_shape, seed=9).numpy()
    np.testing.assert_array_equal(ort_run(a, x), ort_run(b, x))
    # seeded by the key, not by a fixed seed: another op of the same shapes gets other weights
    other = export(OpSpec("fbnet_block", 24, 32, 32, 32, kernel=5, stride=2, expansion=6, activation="none"),
                   "onnx", cache_dir=tmp_path / "a")
    first_weights = [onnx.numpy_helper.to_array(onnx.load(str(f)).graph.initializer[0]) for f in (a, other)]
    assert first_weights[0].shape == first_weights[1].shape and not np.array_equal(*first_weights)


def test_export_is_cached_by_key(tmp_path, monkeypatch):
    calls = []
    real = export_mod._export_onnx

    def counting(item, path):
        calls.append(item.key)
        real(item, path)

    monkeypatch.setattr(export_mod, "_export_onnx", counting)
    op, other = OPS[0], OPS[3]
    first = export(op, "onnx", cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    second = export(op, "onnx", cache_dir=tmp_path)
    assert second == first and calls == [op.key]
    assert first.stat().st_mtime_ns == mtime
    third = export(other, "onnx", cache_dir=tmp_path)
    assert third != first and calls == [op.key, other.key]
    # nothing but the two model files is left behind (no temporary files)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([first.name, third.name])


def test_default_cache_lives_in_latbench_home(latbench_home):
    path = export(OPS[-1], "onnx")
    assert path.is_file()
    assert latbench_home in path.parents


def test_unexportable_op_gives_export_error(tmp_path):
    op = OpSpec("fc", 16, 1, 1, 10, activation="none", dtype="int8")
    with pytest.raises(ExportError, match="cannot export fc:1x16x1x1:c10"):
        export(op, "onnx", cache_dir=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_cache_folder_that_cannot_be_made_is_an_export_error(tmp_path):
    (tmp_path / "models").write_text("")  # a file where the cache folder would go
    with pytest.raises(ExportError, match="cannot export"):
        export(OPS[0], "onnx", cache_dir=tmp_path / "models")


def test_a_corrupt_export_is_caught_and_never_cached(tmp_path, monkeypatch):
    def garbage(item, path):
        path.write_bytes(b"\x08\x07not an onnx model" * 10)

    monkeypatch.setattr(export_mod, "_export_onnx", garbage)
    with pytest.raises(ExportError) as info:
        export(OPS[0], "onnx", cache_dir=tmp_path)
    assert OPS[0].key in str(info.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_file_that_computes_something_else_is_refused(tmp_path, monkeypatch):
    """The check against torch catches an export whose numbers differ (here: another op's weights)."""
    real_build = export_mod.build

    def wrong_weights(item):
        module = real_build(item)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.5)
        return module

    monkeypatch.setattr(export_mod, "_export_onnx", _exporter_with(wrong_weights))
    with pytest.raises(ExportError, match="differs from torch"):
        export(OPS[0], "onnx", cache_dir=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def _exporter_with(build):
    def export_onnx(item, path):
        x = example_input(item.input_shape)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(build(item), (x,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["input"], output_names=["output"])
    return export_onnx


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model format"):
        export(OPS[0], "pb", cache_dir=tmp_path)



def test_an_empty_cached_file_is_exported_again_not_served(tmp_path):
    """A power cut after the rename but before the data reached the disk leaves an empty file
    under the final name: serving it failed every run of that op, collection after collection."""
    op = OPS[-1]
    path = export_mod.cache_path(op, "onnx", export_mod.exporter_tag("onnx"), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert export(op, "onnx", cache_dir=tmp_path) == path
    x = example_input(op.input_shape, seed=3)
    with torch.no_grad():
        expected = build_module(op)(x).numpy()
    assert_close(ort_run(path, x.numpy()), expected)


def test_a_file_is_on_disk_before_it_gets_its_cache_name(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync
    path = export_mod.cache_path(OPS[-1], "onnx", export_mod.exporter_tag("onnx"), tmp_path)

    def fsync(fd):
        synced.append(path.exists())  # the cache name must not be there yet
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    export(OPS[-1], "onnx", cache_dir=tmp_path)
    assert synced == [False]
