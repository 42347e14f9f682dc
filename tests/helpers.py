"""Small artefacts that several test modules build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alexnet_server.train import checkpoint
from alexnet_server.train.model import alexnet
from alexnet_server.train.recipe import resolve


def small_checkpoint(path: Path, num_classes: int = 3, seed: int = 0, classes: list[str] | None = None) -> Path:
    """A checkpoint that follows the contract, with seeded He-normal weights (no training needed).

    Its predictions are arbitrary but deterministic and well separated, which is what
    parity checks need.
    """
    torch.manual_seed(seed)
    recipe = resolve("demo", seed=seed)
    model = alexnet("paper", num_classes, init="kaiming")
    rng = np.random.default_rng(seed)
    mean_image = torch.from_numpy((100 + 40 * rng.random((3, 256, 256))).astype(np.float32))
    names = classes or ["cat", "dog", "fish", "bird", "frog", "horse", "ship", "truck", "plane", "car"][:num_classes]
    payload = checkpoint.build(
        arch="paper", classes=names, state_dict=model.state_dict(), mean_image=mean_image,
        eigenvalues=torch.tensor([0.05, 0.01, 0.001]), eigenvectors=torch.eye(3), recipe=recipe.to_dict(),
    )
    return checkpoint.save(path, payload)


def varied_checkpoint(path: Path, images: np.ndarray, num_classes: int = 10, spread: float = 3.0) -> Path:
    """A small checkpoint whose top-1 differs from image to image (a random net's does not).

    A randomly initialised AlexNet sends every image to the same class: the image-independent
    part of its logits dominates.  Re-centring fc8 on ``images`` (uint8 [N,3,256,256]) and
    scaling it to ``spread`` standard deviations leaves only the image-dependent part, which
    is what tests of quantization need to see a broken calibration flip predictions.
    """
    from alexnet_server.export.source import from_checkpoint

    small_checkpoint(path, num_classes=num_classes)
    state = checkpoint.load(path)
    src = from_checkpoint(path)
    with torch.no_grad():
        x = (torch.from_numpy(images).float() - src.offset) * src.scale
        hidden = src.net.classifier[:6](torch.flatten(src.net.features(x[:, :, 16:240, 16:240]), 1))
        weight = state["state_dict"]["classifier.6.weight"]
        logits = hidden @ weight.T
        factor = spread / logits.std(0).mean()
        state["state_dict"]["classifier.6.weight"] = weight * factor
        state["state_dict"]["classifier.6.bias"] = -logits.mean(0) * factor
    return checkpoint.save(path, state)


# --- shared by several test modules ---------------------------------------------------------------


def run_module(module: str, *args: str, timeout: int = 900, env: dict | None = None):
    """``python -m module args`` in the project, as a user runs it; the CompletedProcess."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)


def run_export(*args: str, timeout: int = 900):
    return run_module("alexnet_server.export", *args, timeout=timeout)


def encode(img, fmt: str, **kwargs) -> bytes:
    """A PIL image encoded in ``fmt`` (JPEG, PNG, ...)."""
    import io

    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds almost no data (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (hidden ones too) with its hash: 'nothing written' means this does not change."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}
