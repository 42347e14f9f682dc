"""What happens to a batch of uint8 256 images on the model's device.

Normalisation: the paper subtracts the training set's per-pixel mean image [2]; the
torchvision arch divides by 255 and standardises per channel.  Both are
``(x - offset) * scale`` with ``offset`` [3,256,256] and ``scale`` [3,1,1], so the export
graph, the evaluation and the training step share one formula.

Augmentation [4.1]: a random 224 crop and a horizontal flip per image, plus PCA colour
noise.  Test time [4.1]: the ten crops of ``imaging.ten_crop_boxes`` with softmax averaged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import imaging


def normalisation(
    arch: str, mean_image: np.ndarray | torch.Tensor | None, input_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset [3,256,256], scale [3,1,1]) float32 for the arch, on the 0-255 input scale.

    ``input_scale`` (recipe, paper arch) multiplies the mean-subtracted image; 1 is the paper.
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


def random_crops(
    images: torch.Tensor,
    offset: torch.Tensor,
    scale: torch.Tensor,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    pca_std: float,
    flip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 [B,3,256,256] -> float [B,3,224,224]: PCA colour noise, mean subtraction, random crop + flip.

    Random numbers come from ``generator`` (on the CPU, seeded per epoch and rank), so a
    resumed run draws exactly what an uninterrupted one would have.
    """
    batch, size, crop = images.shape[0], images.shape[-1], imaging.CROP
    tops = torch.randint(0, size - crop + 1, (batch,), generator=generator).tolist()
    lefts = torch.randint(0, size - crop + 1, (batch,), generator=generator).tolist()
    mirrors = (torch.rand(batch, generator=generator) < 0.5).tolist() if flip else [False] * batch
    # [4.1] add sum_i p_i * alpha_i * lambda_i to every pixel, alpha ~ N(0, pca_std) per image.
    alphas = torch.randn(batch, 3, generator=generator) * pca_std
    noise = (alphas * eigenvalues.cpu()) @ eigenvectors.cpu().T * 255.0  # [B,3], 0-255 scale
    x = images.float()
    x = (x + noise.to(x.device)[:, :, None, None] - offset) * scale
    out = []
    for b, (t, l, m) in enumerate(zip(tops, lefts, mirrors)):
        patch = x[b, :, t : t + crop, l : l + crop]
        out.append(patch.flip(-1) if m else patch)
    return torch.stack(out)


class CropAverage(nn.Module):
    """uint8 IMAGE [N,3,256,256] -> PROBS [N,C]: normalise, cut the crops, softmax, average.

    The test-time procedure of [4.1] (``crops=10``) or the centre crop alone (``crops=1``).
    Used by the evaluation here and exported as the ONNX classifier by export/.
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
        # ONNX Runtime: 4% of an INT8 run before this).
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
