"""Training data for the search: named by a data spec, held in memory as uint8 images.

Specs:
  digits               scikit-learn's handwritten digits (1,797 8x8 grey images that ship
                       with scikit-learn), resized to the space's input and copied to 3 channels
  imagefolder:PATH     one subfolder per class of image files (read with Pillow); PATH/train and
                       PATH/val (or PATH/test) are used as the splits when both exist
  cifar10:PATH         the binary CIFAR-10 release (data_batch_*.bin, test_batch.bin: one label
                       byte, then 3,072 bytes of R, G, B planes per record); never pickle

Training images are split once by seed: `weight_fraction` (80%) trains the weights,
the rest trains theta. The test split is the dataset's own when it has one, else a
seeded `test_fraction` held out before that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from latbench.errors import LatbenchError, UsageError

DATA_KINDS = ("digits", "imagefolder", "cifar10")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32


@dataclass
class ImageSet:
    """Images as uint8 (N, 3, H, W) and labels as int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class SearchData:
    """The three splits of one dataset plus what normalising them needs."""

    name: str
    classes: list[str]
    weights: ImageSet
    theta: ImageSet
    test: ImageSet
    mean: torch.Tensor  # per channel, in [0, 1] units, from the weight split
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {"weights": len(self.weights), "theta": len(self.theta), "test": len(self.test)}


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    kind, _, path = spec.partition(":")
    if kind not in DATA_KINDS:
        raise UsageError(f"unknown data spec {spec!r}",
                         "use digits, imagefolder:PATH or cifar10:PATH")
    if kind == "digits":
        if path:
            raise UsageError(f"the digits data takes no path; got {spec!r}", "use --data digits")
        return kind, None
    if not path:
        raise UsageError(f"--data {kind} needs a folder: {kind}:PATH", f"e.g. --data {kind}:./data")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LatbenchError(f"data folder {folder} does not exist or is not a folder",
                            f"pass the folder that holds the {kind} files")
    return kind, folder


def load_data(spec: str, input_size: int, *, seed: int = 0, weight_fraction: float = 0.8,
              test_fraction: float = 0.2, limit: int | None = None) -> SearchData:
    """The splits of the dataset `spec` names, images resized to `input_size` x `input_size`."""
    kind, folder = parse_data_spec(spec)
    if kind == "digits":
        (train, test), classes = _load_digits(input_size), [str(i) for i in range(10)]
    elif kind == "imagefolder":
        (train, test), classes = _load_imagefolder(folder, input_size)
    else:
        (train, test), classes = _load_cifar10(folder, input_size)
    gen = torch.Generator().manual_seed(seed)
    if test is None:
        perm = torch.randperm(len(train), generator=gen)
        n_test = max(1, int(round(test_fraction * len(train))))
        if len(train) - n_test < 2:
            raise LatbenchError(f"{spec}: {len(train)} image(s) are too few to hold out a test split",
                                "add images, or give PATH/train and PATH/val folders")
        train, test = train.subset(perm[n_test:]), train.subset(perm[:n_test])
    perm = torch.randperm(len(train), generator=gen)
    if limit is not None:
        perm = perm[:limit]
    n_weights = int(round(weight_fraction * len(perm)))
    if n_weights < 1 or len(perm) - n_weights < 1:
        raise LatbenchError(f"{spec}: {len(perm)} training image(s) cannot be split {weight_fraction:.0%} "
                            f"weights / {1 - weight_fraction:.0%} theta", "use more training images")
    weights, theta = train.subset(perm[:n_weights]), train.subset(perm[n_weights:])
    pixels = weights.images.float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    name = spec if kind == "digits" else f"{kind}:{folder}"
    return SearchData(name, classes, weights, theta, test, mean, std)


def batches(data: ImageSet, batch_size: int, *, mean: torch.Tensor, std: torch.Tensor,
            device: torch.device | str = "cpu", shuffle: bool = False,
            generator: torch.Generator | None = None, world=None,
            min_batch: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches (x, y) on `device`; the images stay uint8 until then.

    With a distributed `world` (nas.distributed.World), each rank gets its share of every
    global batch of `batch_size`. A last batch that would leave some rank fewer than
    `min_batch` samples is dropped on all ranks alike (so no rank waits on a step the others
    skip); training passes 2, as BatchNorm cannot normalise a single sample."""
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    m = mean.view(1, -1, 1, 1).to(device)
    s = std.view(1, -1, 1, 1).to(device)
    ranks = world.world_size if world is not None else 1
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if len(idx) // ranks < min_batch:
            break
        if world is not None:
            idx = world.shard(idx)
        x = data.images[idx].to(device).float().div_(255).sub_(m).div_(s)
        yield x, data.labels[idx].to(device)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# ---- readers --------------------------------------------------------------------------------

def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    out = []
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def _load_digits(size: int) -> tuple[ImageSet, None]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise LatbenchError("the digits data needs scikit-learn", "pip install scikit-learn") from None
    digits = load_digits()
    grey = torch.as_tensor(np.round(digits.images * (255.0 / 16.0)), dtype=torch.uint8).unsqueeze(1)
    images = resize_uint8(grey, size).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(images, torch.as_tensor(digits.target, dtype=torch.int64)), None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(folder: Path, size: int, classes: list[str] | None = None) -> tuple[ImageSet, list[str]]:
    from PIL import Image, UnidentifiedImageError

    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    if len(classes) < 2:
        raise LatbenchError(f"imagefolder {folder} has {len(classes)} class folder(s); a classifier needs >= 2",
                            "put each class's images in its own subfolder")
    images, labels = [], []
    for label, name in enumerate(classes):
        sub = folder / name
        files = _image_files(sub) if sub.is_dir() else []
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise LatbenchError(f"cannot read image {path}: {exc}",
                                    "remove or replace the file") from None
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise LatbenchError(f"imagefolder {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) "
                            f"in its class folders", "put each class's images in its own subfolder")
    return ImageSet(torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)), classes


def _load_imagefolder(folder: Path, size: int) -> tuple[tuple[ImageSet, ImageSet | None], list[str]]:
    held_out = next((folder / n for n in ("val", "test") if (folder / n).is_dir()), None)
    if (folder / "train").is_dir() and held_out is not None:
        train, classes = _read_folder(folder / "train", size)
        extra = sorted(d.name for d in held_out.iterdir() if d.is_dir() and d.name not in classes)
        if extra:
            raise LatbenchError(f"{held_out} has class folders that {folder / 'train'} lacks: "
                                f"{', '.join(extra[:5])}", "use the same class folders in both")
        test, _ = _read_folder(held_out, size, classes)
        return (train, test), classes
    train, classes = _read_folder(folder, size)
    return (train, None), classes


def read_cifar10_bin(path: Path) -> ImageSet:
    """One file of the binary CIFAR-10 release: records of 1 label byte + 3,072 pixel bytes."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise LatbenchError(f"{path} is not a binary CIFAR-10 file ({raw.size} bytes is not a multiple "
                            f"of {CIFAR_RECORD_BYTES})", "download the binary version "
                            "(cifar-10-binary.tar.gz) and pass its cifar-10-batches-bin folder")
    records = raw.reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise LatbenchError(f"{path}: label {int(labels.max())} is not a CIFAR-10 class (0..9)",
                            "pass the binary CIFAR-10 files, not CIFAR-100")
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return ImageSet(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def _load_cifar10(folder: Path, size: int) -> tuple[tuple[ImageSet, ImageSet | None], list[str]]:
    if not list(folder.glob("data_batch_*.bin")) and (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    files = sorted(folder.glob("data_batch_*.bin"))
    if not files:
        raise LatbenchError(f"no data_batch_*.bin files in {folder}",
                            "pass the cifar-10-batches-bin folder of the binary CIFAR-10 release")
    parts = [read_cifar10_bin(p) for p in files]
    train = ImageSet(resize_uint8(torch.cat([p.images for p in parts]), size),
                     torch.cat([p.labels for p in parts]))
    test = None
    if (folder / "test_batch.bin").is_file():
        t = read_cifar10_bin(folder / "test_batch.bin")
        test = ImageSet(resize_uint8(t.images, size), t.labels)
    meta = folder / "batches.meta.txt"
    names = [ln.strip() for ln in meta.read_text().splitlines() if ln.strip()] if meta.is_file() else []
    classes = names[:10] if len(names) >= 10 else [str(i) for i in range(10)]
    return (train, test), classes
