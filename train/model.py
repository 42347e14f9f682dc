"""AlexNet as in the 2012 paper [3.5], and torchvision's single-tower variant.

The network, and the served procedure around it (``CropAverage``: uint8 IMAGE
[N,3,256,256] -> PROBS [N,C], normalise, cut the crops, softmax, average [4.1]) with its
normalisation: what export writes as the ONNX and TorchScript classifier, and what
training's validation runs.

``alexnet("paper")`` follows the paper's layer table (two GPU towers expressed as
``groups=2`` on conv2, conv4 and conv5; LRN after the ReLUs of conv1 and conv2;
overlapping 3/2 max-pooling; dropout 0.5 on the outputs of fc6 and fc7): 60,965,224
parameters at 1000 classes.  ``alexnet("torchvision")`` has exactly the keys and shapes
of ``torchvision.models.alexnet`` (61,100,840), so its released weights load strictly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alexnet_server import imaging
ARCHS = ("paper", "torchvision")
INITS = ("paper", "kaiming", "torchvision")

# Sequential indices of the layers the paper gives bias 1 [5]: conv2, conv4, conv5 in
# ``features``, fc6, fc7 in ``classifier``.  The same roles in both archs.
_BIAS_ONE = {
    "paper": {"features": (4, 10, 12), "classifier": (0, 3)},
    "torchvision": {"features": (3, 8, 10), "classifier": (1, 4)},
}


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's LRN [3.3]: b = a / (k + alpha * sum_{n=5 adjacent} a^2)^beta.

    k=2, n=5, alpha=1e-4, beta=0.75.  PyTorch (like ONNX's LRN op) divides alpha by the
    window size n, so the printed formula is ``alpha = 1e-4 * 5 = 5e-4`` here.
    """
    n, alpha = 5, 1e-4
    return nn.LocalResponseNorm(size=n, alpha=alpha * n, beta=0.75, k=2.0)


class PaperAlexNet(nn.Module):
    """[3.5] Figure 2, with the two towers as grouped convolutions."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # conv1: pad 2 on a 224 input gives the paper's 55x55 maps (Caffe: 227, no pad).
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # [3.4] overlapping pooling: z=3, s=2
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # 4 conv2
            nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # 8 conv3: connected across towers
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),  # 10 conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # 12 conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),  # 0 fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),  # [4.2] dropout on the outputs of fc6 and fc7
            nn.Linear(4096, 4096),  # 3 fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),  # 6 fc8; softmax lives in the loss / the export graph
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def _torchvision_alexnet(num_classes: int, dropout: float) -> nn.Module:
    from torchvision.models import AlexNet

    return AlexNet(num_classes=num_classes, dropout=dropout)


def init_weights(model: nn.Module, arch: str, scheme: str = "paper", std: float = 0.01, bias: float = 1.0) -> None:
    """[5] "paper": every weight ~ N(0, std); biases ``bias`` in conv2, conv4, conv5, fc6, fc7, 0 elsewhere.

    "kaiming": He-normal weights (fan-out for convolutions, fan-in for linear layers)
    with zero biases — the deviation that learns on small budgets (see README).
    "torchvision": leave PyTorch's default initialisation.
    """
    if scheme == "torchvision":
        return
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")
    ones = _BIAS_ONE[arch]
    for part in ("features", "classifier"):
        for index, layer in enumerate(getattr(model, part)):
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            if scheme == "paper":
                nn.init.normal_(layer.weight, mean=0.0, std=std)
                nn.init.constant_(layer.bias, bias if index in ones[part] else 0.0)
            else:
                mode = "fan_out" if isinstance(layer, nn.Conv2d) else "fan_in"
                nn.init.kaiming_normal_(layer.weight, mode=mode, nonlinearity="relu")
                nn.init.zeros_(layer.bias)


def alexnet(
    arch: str = "paper",
    num_classes: int = 1000,
    *,
    dropout: float = 0.5,
    init: str = "paper",
    init_std: float = 0.01,
    init_bias: float = 1.0,
) -> nn.Module:
    """Build AlexNet with the given initialisation (the paper's by default)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = PaperAlexNet(num_classes, dropout) if arch == "paper" else _torchvision_alexnet(num_classes, dropout)
    init_weights(model, arch, init, init_std, init_bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the served procedure around the network ------------------------------------------------------


def normalisation(
    arch: str, mean_image: np.ndarray | torch.Tensor | None, input_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset [3,256,256], scale [3,1,1]) float32 for the arch, on the 0-255 input scale:
    the network sees ``(x - offset) * scale``.

    The paper subtracts the training set's per-pixel mean image [2] (``mean_image`` [3,256,256],
    0-255); ``input_scale`` (recipe, paper arch) multiplies the difference, 1 in the paper.
    torchvision's arch divides by 255 and standardises per channel (ImageNet's mean and std).
    ValueError for the paper arch without a mean image.
    """
    size = imaging.SIZE
    if arch == "paper":
        if mean_image is None:
            raise ValueError("the paper arch needs the training set's mean image")
        offset = torch.as_tensor(np.asarray(mean_image), dtype=torch.float32).reshape(3, size, size).clone()
        scale = torch.full((3, 1, 1), float(input_scale))
    else:
        offset = (255.0 * torch.tensor(imaging.IMAGENET_MEAN)).reshape(3, 1, 1).expand(3, size, size).clone()
        scale = (1.0 / (255.0 * torch.tensor(imaging.IMAGENET_STD))).reshape(3, 1, 1)
    return offset, scale


class CropAverage(nn.Module):
    """uint8 IMAGE [N,3,256,256] -> PROBS [N,C]: normalise, cut the crops, softmax, average.

    The test-time procedure of [4.1] (``crops=10``) or the centre crop alone (``crops=1``),
    ``offset``/``scale`` from ``normalisation``.  Training validates with it; export writes it
    as the ONNX and TorchScript classifier.
    """

    def __init__(self, net: nn.Module, offset: torch.Tensor, scale: torch.Tensor, crops: int = 10) -> None:
        super().__init__()
        if crops not in (1, 10):
            raise ValueError(f"crops must be 1 or 10, got {crops}")
        self.net = net
        self.register_buffer("offset", offset.float().clone())
        self.register_buffer("scale", scale.float().clone())
        boxes = imaging.ten_crop_boxes()
        self.boxes = [boxes[imaging.CENTRE]] if crops == 1 else boxes
        self.crops = crops

    def crop_probs(self, image: torch.Tensor) -> torch.Tensor:
        """[N,K,C] softmax of each crop (K = 1 or 10, in ``imaging.ten_crop_boxes`` order)."""
        c = imaging.CROP
        x = (image.float() - self.offset) * self.scale
        # Mirror the whole image once and cut the mirrored crops from it as plain slices:
        # the same pixels as flipping each crop, but a reversed copy of one 256 image
        # instead of five 224 crops (reversed slices are an element-by-element copy in
        # ONNX Runtime, worth avoiding in a graph this small).
        width = x.shape[-1]
        mirror = x.flip(-1) if any(m for _, _, m in self.boxes) else None
        patches = []
        for top, left, mirrored in self.boxes:
            if mirrored:
                patches.append(mirror[:, :, top : top + c, width - left - c : width - left])
            else:
                patches.append(x[:, :, top : top + c, left : left + c])
        n = image.shape[0]
        stacked = torch.stack(patches, dim=1).reshape(n * len(self.boxes), 3, c, c)
        probs = torch.softmax(self.net(stacked).float(), dim=-1)
        return probs.reshape(n, len(self.boxes), -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.crop_probs(image).mean(dim=1)
