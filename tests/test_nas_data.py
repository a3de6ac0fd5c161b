"""Search data: scikit-learn's digits out of the box, the user's image folders, and the binary
CIFAR-10 release, written here in their real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")

from latbench.errors import LatbenchError, UsageError  # noqa: E402
from nas.data import CIFAR_RECORD_BYTES, batches, load_data, read_cifar10_bin  # noqa: E402


def test_digits_resized_to_the_space_input_in_three_channels():
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    data = load_data("digits", 32, seed=0)
    sizes = data.sizes()
    assert sum(sizes.values()) == 1797 and data.num_classes == 10
    assert sizes["test"] == round(0.2 * 1797)
    assert sizes["weights"] == round(0.8 * (1797 - sizes["test"]))
    x = data.weights.images
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert int(x.max()) > 200  # ink reaches full scale after 0..16 -> 0..255
    again = load_data("digits", 32, seed=0)
    other = load_data("digits", 32, seed=1)
    assert torch.equal(again.theta.labels, data.theta.labels)
    assert not torch.equal(other.theta.labels, data.theta.labels)


def test_batches_are_normalised_with_the_weight_split_statistics():
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")
    data = load_data("digits", 8, seed=0)
    xs = torch.cat([x for x, _ in batches(data.weights, 100, mean=data.mean, std=data.std)])
    assert xs.shape == (len(data.weights), 3, 8, 8)
    assert abs(float(xs.mean())) < 1e-3 and float(xs.std()) == pytest.approx(1.0, abs=0.01)


def _write_cifar(path: Path, labels: list[int]) -> np.ndarray:
    rng = np.random.default_rng(len(labels))
    pixels = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    path.write_bytes(records.tobytes())
    return pixels


def test_cifar10_binary_records(tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    pix1 = _write_cifar(folder / "data_batch_1.bin", [3, 7, 0, 9, 1, 2])
    _write_cifar(folder / "data_batch_2.bin", [5, 5, 4, 8])
    _write_cifar(folder / "test_batch.bin", [6, 1, 0])
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    one = read_cifar10_bin(folder / "data_batch_1.bin")
    assert one.labels.tolist() == [3, 7, 0, 9, 1, 2]
    # bytes 1..1024 are the red plane, row-major; then green, then blue
    assert one.images[1, 0, 0, 0] == pix1[1, 0] and one.images[1, 0, 0, 1] == pix1[1, 1]
    assert one.images[1, 1, 0, 0] == pix1[1, 1024] and one.images[1, 2, 31, 31] == pix1[1, 3071]
    data = load_data(f"cifar10:{tmp_path}", 16, seed=0)  # the parent folder is accepted too
    assert len(data.test) == 3 and len(data.weights) + len(data.theta) == 10
    assert sorted(data.test.labels.tolist()) == [0, 1, 6]
    assert data.classes[0] == "class0" and data.weights.images.shape[1:] == (3, 16, 16)


def test_cifar10_wrong_files_are_one_clear_error(tmp_path: Path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x01" * (CIFAR_RECORD_BYTES + 5))
    with pytest.raises(LatbenchError, match="not a binary CIFAR-10 file"):
        load_data(f"cifar10:{tmp_path}", 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LatbenchError, match="no data_batch"):
        load_data(f"cifar10:{empty}", 32)


def _write_images(folder: Path, colours: dict[str, tuple[int, int, int]], count: int, size=(12, 10)):
    from PIL import Image

    for name, colour in colours.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fmt = "PNG" if i % 2 else "JPEG"
            Image.new("RGB", size, colour).save(folder / name / f"{i}.{fmt.lower()}", fmt)


def test_imagefolder_classes_from_subfolders(tmp_path: Path):
    _write_images(tmp_path, {"cat": (250, 0, 0), "dog": (0, 0, 250)}, count=10)
    (tmp_path / "notes.txt").write_text("not an image folder")
    data = load_data(f"imagefolder:{tmp_path}", 8, seed=0)
    assert data.classes == ["cat", "dog"] and sum(data.sizes().values()) == 20
    every = [data.weights, data.theta, data.test]
    images = torch.cat([s.images for s in every]).int()
    labels = torch.cat([s.labels for s in every])
    red = images[:, 0].float().mean(dim=(1, 2))
    blue = images[:, 2].float().mean(dim=(1, 2))
    assert bool((red[labels == 0] > 200).all() and (blue[labels == 1] > 200).all())


def test_imagefolder_with_train_and_val_splits(tmp_path: Path):
    _write_images(tmp_path / "train", {"a": (10, 10, 10), "b": (200, 200, 200)}, count=6)
    _write_images(tmp_path / "val", {"a": (10, 10, 10), "b": (200, 200, 200)}, count=2)
    data = load_data(f"imagefolder:{tmp_path}", 8, seed=0)
    assert len(data.test) == 4 and len(data.weights) + len(data.theta) == 12


def test_imagefolder_problems_are_one_clear_error(tmp_path: Path):
    _write_images(tmp_path, {"only": (1, 2, 3)}, count=2)
    with pytest.raises(LatbenchError, match="a classifier needs >= 2"):
        load_data(f"imagefolder:{tmp_path}", 8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(LatbenchError, match="cannot read image"):
        load_data(f"imagefolder:{tmp_path}", 8)


def test_bad_data_specs():
    with pytest.raises(UsageError, match="unknown data spec"):
        load_data("mnist", 32)
    with pytest.raises(UsageError, match="needs a folder"):
        load_data("cifar10", 32)
    with pytest.raises(LatbenchError, match="does not exist"):
        load_data("imagefolder:/no/such/folder", 32)
