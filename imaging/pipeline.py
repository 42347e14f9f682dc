"""Decode -> orient -> 8-bit RGB -> shorter side 256 -> centre 256 crop; crop geometry."""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 256  # [2] shorter side and centre crop: the image every stage exchanges
CROP = 224  # [4.1] the network's input: random crops in training, ten at test time

# torchvision's released weights were trained on /255 then these per-channel numbers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Transparent pixels are composited on white: the background most product photos and
# icons with an alpha channel are designed to be seen on.
BACKGROUND = (255, 255, 255)

# Refuse anything bigger before decoding it (decompression bombs).  89.5 MP is Pillow's
# own warning threshold; 100 MP still admits every real camera and scanned photo we
# expect, and bounds one decode to ~300 MB of RGB.
MAX_PIXELS = 100_000_000

Source = Union[bytes, bytearray, memoryview, str, os.PathLike]


class ImageError(ValueError):
    """The bytes are not an image we can turn into AlexNet's input; the message says why."""


def _open(data: Source) -> Image.Image:
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise ImageError("empty image: 0 bytes")
        fp = io.BytesIO(bytes(data))
    else:
        fp = os.fspath(data)
        if os.path.isfile(fp) and os.path.getsize(fp) == 0:
            raise ImageError("empty image: 0 bytes")
    try:
        # Pillow's own bomb check would raise only above 2x its threshold; ours below
        # is exact and names the size, so silence its warning instead of duplicating it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format (expected JPEG, PNG, WebP, BMP, GIF or TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except FileNotFoundError:
        raise ImageError(f"no such file: {fp}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image: {exc}") from None


def sniff(data: Source) -> str | None:
    """The image format from the header alone (e.g. "JPEG"), or None when it is not an image."""
    try:
        with _open(data) as img:
            return img.format
    except ImageError:
        return None


def decode(data: Source, *, max_pixels: int = MAX_PIXELS, draft: bool = True) -> Image.Image:
    """Encoded bytes or a path -> an upright 8-bit RGB PIL image.

    The pixel limit is checked on the header, before any pixel is decoded.  With
    ``draft`` a JPEG is decoded by libjpeg's DCT scaling at the smallest of 1/1, 1/2,
    1/4, 1/8 that keeps the shorter side >= 256, which is 2-8x cheaper for camera-sized
    photos; the 256 image then differs from a full decode by a mean absolute error of
    about 1 grey level (measured in tests/test_imaging.py on a real photograph, bound 2).
    Every stage decodes through here, so training and serving see the same pixels.
    """
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animations: the first frame
        if draft and img.format == "JPEG":
            scale = SIZE / min(width, height)
            img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        img.load()
        img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image data ({img.format}): {exc}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16-bit scaled (not clipped), alpha composited on BACKGROUND."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG, TIFF) arrives as I;16 or I with values 0..65535: scale by
        # 255/65535 (x / 257), not by clipping, which would turn most of it white.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":  # float images: taken as 0..255
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's converters are exact for these.
    return img.convert("RGB")


def resize_center(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """Shorter side to ``size`` (bilinear, antialiased), centre ``size``x``size`` crop -> uint8 [3,H,W]."""
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def load(data: Source, *, max_pixels: int = MAX_PIXELS, draft: bool = True) -> np.ndarray:
    """Encoded image (bytes or path) -> uint8 [3,256,256] RGB, the IMAGE every stage exchanges."""
    return resize_center(decode(data, max_pixels=max_pixels, draft=draft))


def from_array(pixels: np.ndarray) -> np.ndarray:
    """A decoded HxW (grey) or HxWx3 uint8 array (e.g. Fashion-MNIST) through the same 256 pipeline."""
    return resize_center(to_rgb(Image.fromarray(np.asarray(pixels, dtype=np.uint8))))


def crop_offsets(size: int = SIZE, crop: int = CROP) -> list[tuple[int, int]]:
    """(top, left) of the five crops, in torchvision's FiveCrop order: TL, TR, BL, BR, centre."""
    far = size - crop
    centre = int(round(far / 2.0))
    return [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


def ten_crop_boxes(size: int = SIZE, crop: int = CROP) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of the paper's ten test crops [4.1], in torchvision's TenCrop order.

    TenCrop mirrors the whole image, then takes the five crops of the mirror: its
    top-left mirrored crop is the mirror of the original's top-right crop, so a
    mirrored box's ``left`` is reflected (``size - crop - left``).
    """
    five = crop_offsets(size, crop)
    far = size - crop
    return [(t, l, False) for t, l in five] + [(t, far - l, True) for t, l in five]


def ten_crops(image: np.ndarray, crop: int = CROP) -> np.ndarray:
    """uint8 [3,256,256] -> [10,3,224,224]: the reference the export graph is checked against."""
    size = image.shape[-1]
    out = []
    for top, left, mirrored in ten_crop_boxes(size, crop):
        patch = image[:, top : top + crop, left : left + crop]
        out.append(patch[:, :, ::-1] if mirrored else patch)
    return np.stack(out)
