"""Shared fixtures: small real files (IDX data sets, JPEG folders, a photograph)."""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


# Disk: every AlexNet checkpoint, ONNX file or repository a test writes is 0.2-0.5 GB, and the
# suite writes ~35 of them (~8.5 GB in one run). pytest keeps every tmp_path until the session
# ends and the last three sessions after that, which once filled a CI machine's disk mid-run.
# So a passed test's folder goes as soon as it passes, module fixtures' folders go with their
# module, and pyproject.toml keeps only failed tests' folders (to read after a red run).
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


_PASSED = pytest.StashKey[bool]()
_DISK_NEEDED_GB = 3.0  # measured peak of the whole suite with the cleanup below: 2.2 GB


def pytest_sessionstart(session):
    """Say up front when the disk cannot hold the suite's model files, not 8 minutes in."""
    temp = Path(tempfile.gettempdir())
    free_gb = shutil.disk_usage(temp).free / 2**30
    if free_gb < _DISK_NEEDED_GB:
        pytest.exit(
            f"the tests write up to {_DISK_NEEDED_GB:.0f} GB of model files under {temp}, "
            f"which has {free_gb:.1f} GB free: free some space or set TMPDIR",
            returncode=1,
        )


@pytest.fixture(autouse=True)
def _remove_tmp_path_of_passed_test(request):
    yield
    folder = request.node.funcargs.get("tmp_path")
    if folder is not None and request.node.stash.get(_PASSED, False):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for one test module's shared artifacts, removed when the module's tests are done."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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
    from alexnet_server.export import cli as export_cli
    from tests.helpers import small_checkpoint

    folder = tmp_path_factory.mktemp("served")
    ckpt = small_checkpoint(folder / "small.pt", num_classes=3)
    repo = folder / "model_repository"
    # TorchScript too, for the pytorch config; the gates on the sample photographs alone.
    assert export_cli.cli([str(ckpt), "--repository", str(repo), "--formats", "onnx,torchscript", "--calibration", "/nonexistent", "--gate-images", "0"]) == 0
    return repo


@pytest.fixture(scope="session")
def triton_server(served_repository, tmp_path_factory):
    """The real tritonserver (the nvidia-pytriton wheel's binary here), free loopback ports, the
    cpu-f32 config (OpenVINO in fp32): the served results equal PyTorch's within float rounding."""
    from tests import serving

    server = serving.start(served_repository, tmp_path_factory.mktemp("triton") / "tritonserver.log", config="cpu-f32")
    yield server
    server.stop()
