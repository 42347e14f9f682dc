"""Where the weights come from: a train/ checkpoint or torchvision's released state_dict file.

Either way the result is the same ``Source``: the PyTorch reference of the served
procedure (``CropAverage``: uint8 IMAGE -> PROBS), the class names, and a description.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet_server.train import checkpoint
from alexnet_server.train.checkpoint import CheckpointError
from alexnet_server.train.model import CropAverage, alexnet, normalisation


@dataclass
class Source:
    arch: str
    classes: list[str]
    net: torch.nn.Module  # eval mode, weights loaded
    offset: torch.Tensor  # the served normalisation: (x - offset) * scale
    scale: torch.Tensor
    origin: str

    def classifier(self, crops: int) -> CropAverage:
        return CropAverage(self.net, self.offset, self.scale, crops).eval()


def from_checkpoint(path: str | Path) -> Source:
    """The checkpoint's network and the normalisation it stores: export reads nothing else of training."""
    state = checkpoint.load(path)
    offset, scale = checkpoint.served_normalisation(state)
    origin = f"{Path(path).name} ({state['arch']}, epoch {int(state['epoch']) + 1})"
    return Source(state["arch"], list(state["classes"]), checkpoint.build_model(state), offset, scale, origin)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in index order, from torchvision's own metadata."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def from_torchvision_weights(path: str | Path) -> Source:
    """A state_dict file as torchvision distributes it (e.g. ``alexnet-owt-7be5be79.pth``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means "not a state_dict file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is not a readable torch state_dict file: {first}") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict and "arch" in state_dict:
        raise CheckpointError(f"{path} is a train/ checkpoint: pass it as CHECKPOINT, not --torchvision-weights")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a dict of tensors)")
    classes = imagenet_classes()
    net = alexnet("torchvision", len(classes), init="torchvision")
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit torchvision's AlexNet (1000 classes): {first}") from None
    offset, scale = normalisation("torchvision", None)
    return Source("torchvision", classes, net.eval(), offset, scale, f"{path.name} (torchvision weights)")
