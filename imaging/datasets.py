"""Labelled image sets as the stages read them: every sample the shared 256x256 uint8 image.

A sample is ``(image, label, problem)``: ``image`` is uint8 [3,256,256] from ``imaging.load``
(or ``imaging.from_array`` for Fashion-MNIST's 28x28 grey arrays), or None when the file could
not be read, in which case ``problem`` names the file and why.  Map-style (``len`` and
indexing), so PyTorch's DataLoader takes them as they are: training (``train.data``), export's
calibration and gates, and ``python -m alexnet_server.export.evaluate`` read the same images the same way.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from alexnet_server.imaging.pipeline import ImageError, from_array, load

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(ValueError):
    """The data set cannot be used; the message names the folder or file and the fix."""


class ImageFolder:
    """``ROOT/<split>/<class>/<image>``: ImageNet and anything shaped like it."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root) / split
        if not self.root.is_dir():
            raise DataError(f"no {split} folder: {self.root} does not exist (expected DIR/{split}/<class>/<images>)")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{self.root} has no class folders (expected {self.root}/<class>/<images>)")
        self.classes = classes
        self.samples: list[tuple[str, int]] = []
        for index, name in enumerate(classes):
            found = sorted(
                str(p) for p in (self.root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            if not found:
                raise DataError(f"class folder {self.root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((f, index) for f in found)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            return load(path), label, None
        except ImageError as exc:
            return None, label, f"{path}: {exc}"

    def identity(self) -> str:
        return f"folder:{self.root.resolve()}:{len(self.samples)}"


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {exc}") from None


class FashionMNIST:
    """Fashion-MNIST from the IDX files (Debian's ``dataset-fashion-mnist``); 'val' is the test set.

    The 28x28 grey images go through the same 256 pipeline as photographs (upscaled,
    repeated to 3 channels), so the exported model serves PNGs of them unchanged.
    """

    classes = list(FASHION_MNIST_CLASSES)

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        images_file, labels_file = _FASHION_FILES[split]
        if not (self.root / images_file).is_file():
            raise DataError(
                f"Fashion-MNIST not found: {self.root / images_file} is missing "
                "(install it with: apt-get install dataset-fashion-mnist)"
            )
        self.images = _read_idx(self.root / images_file)
        self.labels = _read_idx(self.root / labels_file).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise DataError(f"Fashion-MNIST files in {self.root} disagree: {self.images.shape} images, {self.labels.shape} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return from_array(self.images[index]), int(self.labels[index]), None

    def identity(self) -> str:
        return f"fashion-mnist:{self.root.resolve()}:{len(self)}"


def open_split(spec: str, split: str) -> ImageFolder | FashionMNIST:
    """``spec`` is ``fashion-mnist``, a folder of Fashion-MNIST IDX files, or an ImageFolder root."""
    if spec == "fashion-mnist":
        return FashionMNIST(FASHION_MNIST_DIR, split)
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if (root / _FASHION_FILES["train"][0]).is_file():
        return FashionMNIST(root, split)
    return ImageFolder(root, split)


def subset_indices(n: int, limit: int, seed: int) -> list[int] | None:
    """The first ``limit`` of a seeded permutation (a class-balanced sample on average); None = all.
    PyTorch's generator draws it, so training, export and evaluation sample the same images for
    a seed (PyTorch is imported only for a sample; every caller has it)."""
    if not limit or limit >= n:
        return None
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:limit].tolist())
