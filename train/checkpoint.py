"""The checkpoint contract (DESIGN.md): a ``torch.save`` dict loadable with ``weights_only=True``.

Keys: arch, num_classes, classes, state_dict, mean_image (paper arch), pca
(eigenvalues, eigenvectors), epoch, optimizer, scheduler, recipe, metrics, geometry (the
input's resize and crop sizes), normalisation (the served ``offset`` [3,256,256] and
``scale`` [3,1,1], ``train.model.normalisation``), plus rng.  ``classifier`` rebuilds the
served procedure from the file alone: what export reads.  Written to a temporary file in the same folder
and renamed, so a crash never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet_server import imaging
from alexnet_server.contract import files

REQUIRED = ("arch", "num_classes", "classes", "state_dict", "mean_image", "pca", "epoch", "recipe", "metrics")
# The input geometry every checkpoint was trained on: shorter side / centre crop, network crop.
# A checkpoint without the key was trained on 256/224: the pipeline has made no other.
GEOMETRY = {"size": imaging.SIZE, "crop": imaging.CROP}


def build(
    *, arch: str, classes: list[str], state_dict: dict[str, torch.Tensor], mean_image: Any, eigenvalues: Any, eigenvectors: Any,
    recipe: dict[str, Any], epoch: int = 0, optimizer: dict | None = None, scheduler: dict | None = None,
    metrics: list[dict] | None = None, rng: torch.Tensor | None = None, normalisation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the contract, from its parts (tensors moved to the CPU).
    ``normalisation`` (offset, scale) defaults to ``train.model.normalisation`` of the arch,
    the mean image and the recipe's ``input_scale``."""
    offset, scale = normalisation if normalisation is not None else _derived_normalisation(arch, mean_image, recipe)
    payload = {
        "arch": arch, "num_classes": len(classes), "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "mean_image": None if mean_image is None else torch.as_tensor(mean_image).float().cpu(),
        "pca": {"eigenvalues": torch.as_tensor(eigenvalues), "eigenvectors": torch.as_tensor(eigenvectors)},
        "epoch": epoch, "optimizer": optimizer or {}, "scheduler": scheduler or {}, "recipe": recipe,
        "metrics": list(metrics or []), "geometry": dict(GEOMETRY),
        "normalisation": {"offset": offset.detach().float().cpu(), "scale": scale.detach().float().cpu()},
    }  # fmt: skip
    if rng is not None:
        payload["rng"] = rng
    return payload


class CheckpointError(ValueError):
    """The file is not a usable checkpoint; the message names it and says why."""


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    with files.atomic_output(path) as fh:
        torch.save(payload, fh)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint; raises CheckpointError with one readable line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a foreign file; all mean "not a checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a torch.save file): {first}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        hint = " (a bare state_dict? use alexnet-export --torchvision-weights)" if "state_dict" in missing else ""
        raise CheckpointError(f"{path} is not an AlexNet checkpoint: missing {', '.join(missing)}{hint}")
    if payload["arch"] not in ("paper", "torchvision"):
        raise CheckpointError(f"{path}: unknown arch {payload['arch']!r}")
    if len(payload["classes"]) != payload["num_classes"]:
        raise CheckpointError(f"{path}: {len(payload['classes'])} class names for num_classes={payload['num_classes']}")
    if payload["arch"] == "paper" and payload["mean_image"] is None:
        raise CheckpointError(f"{path}: the paper arch needs mean_image")
    stored = payload.get("normalisation")
    if stored is not None and (not isinstance(stored, dict) or tuple(getattr(stored.get("offset"), "shape", ())) != (3, GEOMETRY["size"], GEOMETRY["size"])
                               or tuple(getattr(stored.get("scale"), "shape", ())) != (3, 1, 1)):  # fmt: skip
        raise CheckpointError(f"{path}: normalisation must hold offset [3,{GEOMETRY['size']},{GEOMETRY['size']}] and scale [3,1,1]")
    geometry = payload.get("geometry", GEOMETRY)
    if geometry != GEOMETRY:
        raise CheckpointError(
            f"{path} was trained on {geometry['size']}-pixel images cut to {geometry['crop']}-pixel crops; this version "
            f"of the pipeline makes {GEOMETRY['size']}/{GEOMETRY['crop']} (retrain, or export with the version that trained it)"
        )
    return payload


def build_model(payload: dict[str, Any]) -> torch.nn.Module:
    """The network of a loaded checkpoint, weights in, eval mode."""
    from alexnet_server.train.model import alexnet

    model = alexnet(payload["arch"], payload["num_classes"], init="torchvision")
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"state_dict does not fit the {payload['arch']} arch: {first}") from None
    return model.eval()


def served_normalisation(payload: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset [3,256,256], scale [3,1,1]) float32 the network was trained behind.  A checkpoint
    written before the key existed holds what it was computed from (arch, mean image, the
    recipe's input_scale), and gets the same values."""
    stored = payload.get("normalisation")
    if stored is not None:
        return stored["offset"], stored["scale"]
    return _derived_normalisation(payload["arch"], payload["mean_image"], payload.get("recipe") or {})


def _derived_normalisation(arch: str, mean_image: Any, recipe: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    from alexnet_server.train.model import normalisation

    return normalisation(arch, mean_image, float(recipe.get("input_scale", 1.0)) if arch == "paper" else 1.0)


def classifier(payload: dict[str, Any], crops: int = 10) -> torch.nn.Module:
    """The served procedure of a loaded checkpoint (``train.model.CropAverage``: uint8 IMAGE
    [N,3,256,256] -> PROBS [N,C]), eval mode."""
    from alexnet_server.train.model import CropAverage

    offset, scale = served_normalisation(payload)
    return CropAverage(build_model(payload), offset, scale, crops).eval()
