"""Decode -> orient -> shorter side 256 -> centre 256 crop -> 8-bit RGB; the crop geometry.

Memory per decode is bounded: only the decoded source and 256x256 working images are ever
held.  The centre crop is cut *while* resampling (Pillow's ``resize(box=...)`` over the
source region the crop keeps, the same arithmetic as resizing the whole image and cropping
it), EXIF orientation and the colour conversion are applied to the 256x256 result, and
JPEGs are decoded by libjpeg's DCT scaling at the smallest size whose shorter side is still
>= 256.  So the peak of one decode is the decoded source (refused from the header above
``MAX_DECODE_BYTES``) plus about 1 MB, whatever the aspect ratio: a 1x8000 PNG no longer
becomes a 256x2,048,000 intermediate image.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = 256  # [2] shorter side and centre crop: the image every stage exchanges
CROP = 224  # [4.1] the network's input: random crops in training, ten at test time

# torchvision's released weights were trained on /255 then these per-channel numbers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Transparent pixels are composited on white: the background most product photos and
# icons with an alpha channel are designed to be seen on.
BACKGROUND = (255, 255, 255)

# Refuse anything bigger before decoding it (decompression bombs).  89.5 MP is Pillow's own
# warning threshold; 100 MP still admits every real camera and scanned photo we expect.
MAX_PIXELS = 100_000_000
# The decoded source of one image, estimated from its header (pixels x bytes per pixel in
# Pillow's mode, plus the 8-bit copy palette and bilevel images need before resampling):
# 400 MiB admits a 100 MP RGBA PNG.  Together with the ~1 MB of 256x256 working images this
# is the bound on one decode's memory (README, "Bounded memory").
MAX_DECODE_BYTES = 400 * 2**20

EncodedImage = Union[bytes, bytearray, memoryview, str, os.PathLike]

# The formats we decode (Pillow's format ids), and no others: untrusted bytes never reach the
# rest of Pillow's plugins (EPS would run Ghostscript where it is installed; AVIF, PSD, ICNS...
# are not listed, so not tested).  PPM covers its PBM/PGM siblings; a JPEG with a multi-picture
# index (MPO) is opened by the JPEG plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF or PPM"

# EXIF orientation (tag 0x0112) -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
                    "RGB": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}  # fmt: skip


class ImageError(ValueError):
    """The bytes are not an image we can turn into AlexNet's input; the message says why.

    ``reason`` is one word for scripts: empty, unreadable (no such file, permission denied),
    unsupported (not an image format we read), truncated (corrupt or cut short), too_large.
    """

    def __init__(self, message: str, reason: str = "truncated") -> None:
        super().__init__(message)
        self.reason = reason


def _source(data: EncodedImage) -> BinaryIO | str:
    """A file object or path for Pillow; ImageError for what cannot be read at all."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise ImageError("empty image: 0 bytes", "empty")
        return io.BytesIO(bytes(data))
    path = os.fspath(data)
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise ImageError("empty image: 0 bytes", "empty")
    except FileNotFoundError:
        raise ImageError("no such file", "unreadable") from None
    except PermissionError:
        raise ImageError("permission denied", "unreadable") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file", "unreadable") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", "unreadable") from None
    return path


def _open(data: EncodedImage) -> Image.Image:
    source = _source(data)
    try:
        # Pillow's own bomb check raises only above 2x its threshold; ours (below) is exact
        # and names the size, so its warning is silenced rather than duplicated.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not a recognised image format (expected {FORMAT_NAMES})", "unsupported") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}", "too_large") from None
    except ValueError as exc:  # e.g. a PNG text or ICC chunk over Pillow's safety limit
        if "too large" in str(exc).lower():
            raise ImageError(f"image metadata too large: {exc}", "too_large") from None
        raise ImageError(f"corrupt image header: {exc}", "truncated") from None
    except (OSError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageError(f"corrupt image header: {exc}", "truncated") from None


def sniff(data: EncodedImage) -> str | None:
    """The image format from the header alone (e.g. "JPEG"), or None: not an image, or unreadable.

    Never raises."""
    try:
        with _open(data) as img:
            return img.format
    except ImageError as exc:
        if exc.reason == "too_large":  # an image, refused later with the reason
            return "image"
        return None
    except Exception:  # noqa: BLE001 - a decoder plugin's bug is "not an image we read", never a crash
        return None


# --- header facts that Pillow drops ---------------------------------------------------------------


def orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent).  Read by Pillow; where Pillow's EXIF parser
    gives up on a corrupt block, read from the raw IFD0 entries, so one broken tag does not
    turn a photo sideways."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on corrupt EXIF
        value = None
    if value not in _ORIENT:
        value = _raw_orientation(img.info.get("exif")) or value
    return value if value in _ORIENT else 1


def _raw_orientation(exif: bytes | None) -> int | None:
    """Tag 0x0112 from IFD0 of raw EXIF bytes (TIFF layout); None when absent or unreadable."""
    if not exif:
        return None
    data = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    if data[:2] not in (b"II", b"MM"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for i in range(min(count, 512)):
            tag, kind, _n = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:  # SHORT, stored in the entry itself
                return struct.unpack_from(order + "H", data, ifd + 2 + 12 * i + 8)[0]
    except struct.error:
        return None
    return None


def significant_bits(img: Image.Image, data: EncodedImage) -> int:
    """The bit depth the file states for 16-bit samples: a PNG's sBIT chunk or a TIFF's
    MaxSampleValue tag; 16 when it states none."""
    if img.format == "TIFF":
        maximum = getattr(img, "tag_v2", {}).get(281)
        maximum = maximum[0] if isinstance(maximum, tuple) else maximum
        return max(1, min(16, int(maximum).bit_length())) if maximum else 16
    if img.format != "PNG":
        return 16
    try:
        fh = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else open(os.fspath(data), "rb")
        with fh:
            fh.seek(8)
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return 16
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    bits = fh.read(length)
                    return max(1, min(16, bits[0])) if bits else 16
                if kind in (b"IDAT", b"IEND"):
                    return 16
                fh.seek(length + 4, io.SEEK_CUR)
    except (OSError, struct.error):
        return 16


# --- the pipeline ---------------------------------------------------------------------------------


def _check_size(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})", "truncated")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}", "too_large")


def _decode_bytes(img: Image.Image) -> int:
    """Bytes of the decoded source, plus the 8-bit RGBA copy that palette/bilevel images need."""
    pixels = img.size[0] * img.size[1]
    extra = 4 if img.mode in ("P", "PA", "1") else 0
    return pixels * (_BYTES_PER_PIXEL.get(img.mode, 4) + extra)


def _load_pixels(data: EncodedImage, max_pixels: int, draft: bool) -> tuple[Image.Image, int]:
    """The decoded (possibly DCT-reduced) first frame and its EXIF orientation; header limits first."""
    img = _open(data)
    _check_size(img, max_pixels)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animations: the first frame
        rotate = orientation(img)
        if draft and img.format == "JPEG":
            width, height = img.size
            scale = SIZE / min(width, height)
            img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        need = _decode_bytes(img)
        if need > MAX_DECODE_BYTES:
            raise ImageError(
                f"image too large to decode: {img.size[0]}x{img.size[1]} {img.mode} needs {need / 2**20:,.0f} MiB, "
                f"over the {MAX_DECODE_BYTES / 2**20:,.0f} MiB limit per image", "too_large")  # fmt: skip
        img.load()
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"image too large to decode in the memory available ({img.size[0]}x{img.size[1]})", "too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"truncated or corrupt image data ({img.format}): {exc}", "truncated") from None
    return img, rotate


def centre_box(width: int, height: int, size: int = SIZE) -> tuple[float, float, float, float]:
    """The source region (left, top, right, bottom) that the centre ``size`` crop of the image
    resized to shorter side ``size`` keeps: resizing just this region to ``size`` x ``size`` gives
    the same pixels as resizing everything and cropping (Pillow samples at the same positions)."""
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    sx, sy = width / new_w, height / new_h  # source pixels per resized pixel, per axis
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _oriented_box(box: tuple[float, float, float, float], width: int, height: int, rotate: int) -> tuple[float, ...]:
    """``box`` given in the upright frame -> the same region in the stored ``width`` x ``height`` frame."""
    left, top, right, bottom = box
    corners = [(left, top), (right, bottom)]
    maps = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (width - x, y),
        3: lambda x, y: (width - x, height - y),
        4: lambda x, y: (x, height - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (y, height - x),
        7: lambda x, y: (width - y, height - x),
        8: lambda x, y: (width - y, x),
    }
    (x0, y0), (x1, y1) = (maps[rotate](x, y) for x, y in corners)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _resample_centre(img: Image.Image, rotate: int, size: int = SIZE) -> Image.Image:
    """The centre crop of the upright image at shorter side ``size``, as a ``size`` x ``size`` image
    in a resamplable mode (palette and bilevel images are expanded first: Pillow would resample
    them nearest-neighbour)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    elif img.mode == "1":
        img = img.convert("L")
    width, height = img.size
    upright = (height, width) if rotate in (5, 6, 7, 8) else (width, height)
    box = _oriented_box(centre_box(*upright, size), width, height, rotate)
    out = img.resize((size, size), Image.BILINEAR, box=box)
    return out.transpose(_ORIENT[rotate]) if rotate in _ORIENT else out


def to_rgb(img: Image.Image, bits: int = 16, float_range: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    16-bit grey is scaled by its stated depth (``bits``: a 12-bit PNG's 0..4095 fills 0..255),
    not clipped; float images are taken as 0..1 when their whole range (``float_range``) lies
    there, else as 0..255 and clipped; alpha is composited on BACKGROUND.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        top = float(2**bits - 1)
        arr = np.asarray(img, dtype=np.float64) * (255.0 / top)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        low, high = float_range if float_range is not None else (float(arr.min()), float(arr.max()))
        if 0.0 <= low and high <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's converters are exact for these.
    return img.convert("RGB")


def _to_array(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def load(data: EncodedImage, *, max_pixels: int = MAX_PIXELS, draft: bool = True) -> np.ndarray:
    """Encoded image (bytes or a path) -> uint8 [3,256,256] RGB, the IMAGE every stage exchanges.

    Raises ImageError (with ``reason``) for anything that is not a usable image: empty,
    unreadable, unsupported format, truncated or corrupt, over ``max_pixels`` or
    ``MAX_DECODE_BYTES`` (checked from the header, before decoding).  Peak memory: the decoded
    source plus ~1 MB (module doc).
    """
    img, rotate = _load_pixels(data, max_pixels, draft)
    bits = significant_bits(img, data) if img.mode.startswith("I;16") or img.mode == "I" else 16
    float_range = img.getextrema() if img.mode == "F" else None
    return _to_array(to_rgb(_resample_centre(img, rotate), bits, float_range))


def decode(data: EncodedImage, *, max_pixels: int = MAX_PIXELS, draft: bool = False) -> Image.Image:
    """Encoded image -> the whole upright 8-bit RGB image (for re-encoding, viewing), same limits as ``load``."""
    img, rotate = _load_pixels(data, max_pixels, draft)
    bits = significant_bits(img, data) if img.mode.startswith("I;16") or img.mode == "I" else 16
    float_range = img.getextrema() if img.mode == "F" else None
    img = img.transpose(_ORIENT[rotate]) if rotate in _ORIENT else img
    return to_rgb(img, bits, float_range)


def load_or_reason(data: bytes, max_bytes: int, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """(uint8 [3,256,256], None), or (None, why it cannot be): never raises, so one bad image
    cannot fail the batch it came in.  The serving decode (the preprocess model's, and
    alexnet-label's Ray engine): over ``max_bytes`` encoded it is refused unread, then ``load``."""
    if len(data) > max_bytes:
        return None, f"image too large: {len(data):,} bytes encoded, over the limit of {max_bytes:,}"
    try:
        return load(data, max_pixels=max_pixels), None
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not take the batch down
        return None, f"cannot decode image: {type(exc).__name__}: {exc}"


def from_array(pixels: np.ndarray) -> np.ndarray:
    """A decoded HxW (grey) or HxWx3 uint8 array (e.g. Fashion-MNIST) through the same 256 pipeline."""
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return _to_array(to_rgb(_resample_centre(img, 1)))


def crop_offsets(size: int = SIZE, crop: int = CROP) -> list[tuple[int, int]]:
    """(top, left) of the five crops, in torchvision's FiveCrop order: TL, TR, BL, BR, centre."""
    far = size - crop
    centre = int(round(far / 2.0))
    return [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


CENTRE = 4  # the centre crop's index in crop_offsets / ten_crop_boxes (FiveCrop order)


def ten_crop_boxes(size: int = SIZE, crop: int = CROP) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of the paper's ten test crops [4.1], in torchvision's TenCrop order.

    TenCrop mirrors the whole image, then takes the five crops of the mirror: its
    top-left mirrored crop is the mirror of the original's top-right crop, so a
    mirrored box's ``left`` is reflected (``size - crop - left``).
    """
    five = crop_offsets(size, crop)
    far = size - crop
    return [(t, l, False) for t, l in five] + [(t, far - l, True) for t, l in five]
