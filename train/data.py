"""Training's loaders and the training-set statistics, over the shared data sets (``imaging.datasets``).

Bad files (a sample whose image is None) are dropped by ``collate`` and reported by the loop
at the end of the epoch, which goes on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from alexnet_server import imaging
from alexnet_server.contract import files
from alexnet_server.imaging.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, DataError, FashionMNIST, ImageFolder, open_split, subset_indices

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "DataError", "FashionMNIST", "ImageFolder", "open_split", "subset_indices",
           "collate", "make_loader", "compute_stats"]  # fmt: skip

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
