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
