"""Small artefacts that several test modules build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train import checkpoint
from train.model import alexnet
from train.recipe import resolve


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
    payload = {
        "arch": "paper", "num_classes": num_classes, "classes": names,
        "state_dict": model.state_dict(), "mean_image": mean_image,
        "pca": {"eigenvalues": torch.tensor([0.05, 0.01, 0.001]), "eigenvectors": torch.eye(3)},
        "epoch": 0, "optimizer": {}, "scheduler": {}, "recipe": recipe.to_dict(), "metrics": [],
    }  # fmt: skip
    return checkpoint.save(path, payload)


def varied_checkpoint(path: Path, images: np.ndarray, num_classes: int = 10, spread: float = 3.0) -> Path:
    """A small checkpoint whose top-1 differs from image to image (a random net's does not).

    A randomly initialised AlexNet sends every image to the same class: the image-independent
    part of its logits dominates.  Re-centring fc8 on ``images`` (uint8 [N,3,256,256]) and
    scaling it to ``spread`` standard deviations leaves only the image-dependent part, which
    is what tests of quantization need to see a broken calibration flip predictions.
    """
    from export.source import from_checkpoint

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
