"""Data sets that yield the shared 256x256 uint8 image, the training-set statistics, and loaders.

A sample is ``(image, label, problem)``: ``image`` is uint8 [3,256,256] from the shared
``imaging`` module, or None when the file could not be read, in which case ``problem``
names the file and why.  Bad files are dropped by ``collate`` and reported by the loop
at the end of the epoch, which goes on.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import imaging
from contract import files

log = logging.getLogger(__name__)

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


class ImageFolder(Dataset):
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
            files = sorted(
                str(p) for p in (self.root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            if not files:
                raise DataError(f"class folder {self.root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((f, index) for f in files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            return imaging.load(path), label, None
        except imaging.ImageError as exc:
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


class FashionMNIST(Dataset):
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
        return imaging.from_array(self.images[index]), int(self.labels[index]), None

    def identity(self) -> str:
        return f"fashion-mnist:{self.root.resolve()}:{len(self)}"


def open_split(spec: str, split: str) -> Dataset:
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
    """The first ``limit`` of a seeded permutation (a class-balanced sample on average); None = all."""
    if not limit or limit >= n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:limit].tolist())


def collate(batch):
    """Stack the readable samples; hand the problems of the others on to the loop."""
    good = [(img, label) for img, label, _ in batch if img is not None]
    problems = [problem for img, _, problem in batch if img is None]
    if good:
        images = torch.from_numpy(np.stack([img for img, _ in good]))
        labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    else:
        images = torch.empty((0, 3, imaging.SIZE, imaging.SIZE), dtype=torch.uint8)
        labels = torch.empty((0,), dtype=torch.int64)
    return images, labels, problems


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | Sequence[int], workers: int, pin: bool) -> DataLoader:
    # Decoding happens in worker processes; the model gets uint8 256 images and the
    # cheap per-image augmentation runs on the model's device (train/transforms.random_crops).
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        drop_last=False,
    )


def compute_stats(dataset: Dataset, indices: Sequence[int], cache_dir: Path, workers: int = 0):
    """[2] the per-pixel mean image and [4.1] the RGB covariance's eigen-decomposition.

    One pass over ``indices`` (progress bar), cached in ``cache_dir`` by the data set's
    identity and the sample, so a second run (or a resume) does not repeat it.
    Returns (mean_image float32 [3,256,256] on the 0-255 scale, eigenvalues [3],
    eigenvectors [3,3] as columns; both from pixels on the 0-1 scale).
    """
    from tqdm import tqdm

    key = hashlib.sha256(f"{dataset.identity()}|{len(indices)}|{indices[0]}|{indices[-1]}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"stats-{key}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return stored["mean_image"], stored["eigenvalues"], stored["eigenvectors"]

    total = np.zeros((3, imaging.SIZE, imaging.SIZE), dtype=np.float64)
    outer = np.zeros((3, 3), dtype=np.float64)  # sum of x x^T over pixels, 0-1 scale
    count = 0
    loader = make_loader(dataset, 64, indices, workers, pin=False)
    for images, _, _ in tqdm(loader, desc="mean image + RGB PCA", unit="batch", leave=False):
        x = images.numpy().astype(np.float64)
        total += x.sum(axis=0)
        pixels = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        outer += pixels @ pixels.T
        count += len(x)
    if count == 0:
        raise DataError("no readable training images to compute the mean image from")
    mean_image = (total / count).astype(np.float32)
    n_pixels = count * imaging.SIZE * imaging.SIZE
    mean_rgb = mean_image.reshape(3, -1).mean(axis=1).astype(np.float64) / 255.0
    covariance = outer / n_pixels - np.outer(mean_rgb, mean_rgb)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.clip(eigenvalues, 0.0, None).astype(np.float32)
    eigenvectors = eigenvectors.astype(np.float32)
    with files.atomic_output(cache) as fh:
        np.savez(fh, mean_image=mean_image, eigenvalues=eigenvalues, eigenvectors=eigenvectors)
    return mean_image, eigenvalues, eigenvectors
