"""JPEG decode on the GPU (nvJPEG, through ``torchvision.io.decode_jpeg(device="cuda")``),
with the geometry of ``imaging.load``: EXIF orientation, shorter side 256 (bilinear,
antialiased), centre 256x256 crop, 8-bit RGB.

For the preprocess model when the server runs on a GPU: a whole batch of JPEGs is decoded
in one nvJPEG call, then oriented, resized and cropped on the GPU.  Everything else --
other formats, CMYK or progressive-only oddities nvJPEG refuses, images over
``MAX_GPU_PIXELS`` or of extreme aspect ratios -- goes through the CPU path
(``imaging.load``), which also gives every bad image its error.  PyTorch and torchvision are
imported only here, so ``import imaging`` stays torch-free.

Not bit-identical to the CPU path: nvJPEG's IDCT and chroma upsampling differ from
libjpeg's, the CPU path decodes large JPEGs at a reduced DCT scale, and torch's antialiased
bilinear is PIL's algorithm in float.  The stated tolerance against ``imaging.load`` on
photographs (tests/test_imaging_gpu.py, where CUDA exists; measured by scripts/gpu_check):
mean |delta| <= 3 grey levels over the 256x256x3 pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from alexnet_server.imaging.pipeline import SIZE, orientation

MAX_GPU_PIXELS = 50_000_000  # larger JPEGs take the CPU path (DCT-scaled decode there)
MAX_ASPECT = 8.0  # beyond it the full-image resize would be a needlessly large intermediate
MEAN_TOLERANCE = 3.0  # mean |delta| against imaging.load, grey levels (see the module doc)


@dataclass(frozen=True)
class Plan:
    """What the header says about one JPEG the GPU can take."""

    width: int
    height: int
    orientation: int


def unavailable() -> str | None:
    """None when JPEGs can be decoded on a GPU here, else why not (one line)."""
    try:
        import torch
        import torchvision.io  # noqa: F401
    except ImportError as exc:
        return f"GPU decode needs torch and torchvision ({exc.name} is not installed)"
    if not torch.cuda.is_available():
        return "GPU decode needs a CUDA GPU; none is visible to PyTorch"
    return None


def plan(data: bytes, max_pixels: int) -> Plan | None:
    """A Plan when ``data`` is a JPEG the GPU path takes (its header read, nothing decoded), else None."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L", "YCbCr"):
                return None
            width, height = img.size
            rotate = orientation(img)
    except Exception:  # noqa: BLE001 - the CPU path names whatever is wrong
        return None
    if width < 1 or height < 1 or width * height > min(max_pixels, MAX_GPU_PIXELS):
        return None
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return None
    return Plan(width, height, rotate)


def _upright(x, rotate: int):
    """[3,H,W] as stored -> upright: the transposes of imaging's EXIF table, on the GPU."""
    import torch

    if rotate == 2:
        return x.flip(2)
    if rotate == 3:
        return x.flip([1, 2])
    if rotate == 4:
        return x.flip(1)
    if rotate == 5:
        return x.transpose(1, 2)
    if rotate == 6:
        return torch.rot90(x, -1, (1, 2))
    if rotate == 7:
        return x.transpose(1, 2).flip([1, 2])
    if rotate == 8:
        return torch.rot90(x, 1, (1, 2))
    return x


def _resize_centre(x, size: int = SIZE):
    """[3,H,W] uint8 on the GPU -> [3,size,size] uint8: shorter side ``size``, centre crop (imaging's arithmetic)."""
    import torch
    import torch.nn.functional as F

    height, width = x.shape[1], x.shape[2]
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        y = F.interpolate(x[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return x[:, top : top + size, left : left + size]


def load_batch(items: list[bytes], plans: list[Plan], device: str = "cuda") -> list[np.ndarray | None]:
    """uint8 [3,256,256] per item, decoded on ``device``; None where nvJPEG refused the item
    (the caller sends those through the CPU path).  One batched nvJPEG call for the batch;
    if it fails as a whole, each item is tried alone so one bad file costs only itself."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in items]
    try:
        decoded: list = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    out: list[np.ndarray | None] = []
    for image, p in zip(decoded, plans):
        if image is None or tuple(image.shape[1:]) != (p.height, p.width):
            out.append(None)
            continue
        out.append(to_numpy(_resize_centre(_upright(image, p.orientation)).contiguous().cpu()))
    return out


def to_torch(array):
    """numpy -> torch; through the buffer protocol where this torch was built for another NumPy
    major (the python-backend stub runs NumPy 1.26 beside a torch built against NumPy 2)."""
    import torch

    try:
        return torch.from_numpy(array)
    except (RuntimeError, TypeError):
        array = np.ascontiguousarray(array)
        return torch.frombuffer(bytearray(array.tobytes()), dtype=getattr(torch, array.dtype.name)).reshape(array.shape)


def to_numpy(tensor):
    """torch (CPU) -> numpy, with the same fallback as ``to_torch``."""
    try:
        return tensor.numpy()
    except (RuntimeError, TypeError):
        return np.asarray(tensor.tolist(), dtype=str(tensor.dtype).removeprefix("torch."))
