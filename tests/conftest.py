"""Shared fixtures: small real files (IDX data sets, JPEG folders, a photograph)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_fashion_like(root: Path, n_train: int, n_val: int, classes: int = 10, seed: int = 0) -> Path:
    """IDX files shaped like Fashion-MNIST: 28x28 grey, a class-dependent bright bar plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * int(label)
            images[i, row : row + 3, 4:24] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    return make_fashion_like(tmp_path_factory.mktemp("fashion"), n_train=48, n_val=20)


@pytest.fixture(scope="session")
def photo_path() -> Path:
    """A real photograph shipped with matplotlib (Grace Hopper, 512x600 JPEG)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert path.is_file(), f"matplotlib's sample photograph is missing: {path}"
    return path


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0, size=(320, 240)) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, size=(size[1], size[0], 3)).astype(np.uint8)
                pixels[:, :, c % 3] = 200
                Image.fromarray(pixels).save(folder / f"img_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory) -> Path:
    """A repository exported from a small 3-class checkpoint: what the server tests serve."""
    from export import cli as export_cli
    from tests.helpers import small_checkpoint

    folder = tmp_path_factory.mktemp("served")
    ckpt = small_checkpoint(folder / "small.pt", num_classes=3)
    repo = folder / "model_repository"
    assert export_cli.cli([str(ckpt), "--repository", str(repo)]) == 0
    return repo


@pytest.fixture(scope="session")
def triton_server(served_repository, tmp_path_factory):
    """The real tritonserver (the nvidia-pytriton wheel's binary here), cpu config, free loopback ports."""
    from tests import serving

    server = serving.start(served_repository, tmp_path_factory.mktemp("triton") / "tritonserver.log")
    yield server
    server.stop()
