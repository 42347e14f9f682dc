"""Training's augmentation, on the model's device: uint8 256 images -> normalised random 224 crops.

[4.1]: a random 224 crop and a horizontal flip per image, plus PCA colour noise, then the
served normalisation (``train.model.normalisation``: the same ``(x - offset) * scale`` the
exported graph applies).  Test time is ``train.model.CropAverage``, the served procedure.
"""

from __future__ import annotations

import torch

from alexnet_server import imaging
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
