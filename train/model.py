"""AlexNet as in the 2012 paper [3.5], and torchvision's single-tower variant.

``alexnet("paper")`` follows the paper's layer table (two GPU towers expressed as
``groups=2`` on conv2, conv4 and conv5; LRN after the ReLUs of conv1 and conv2;
overlapping 3/2 max-pooling; dropout 0.5 on the outputs of fc6 and fc7): 60,965,224
parameters at 1000 classes.  ``alexnet("torchvision")`` has exactly the keys and shapes
of ``torchvision.models.alexnet`` (61,100,840), so its released weights load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

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
