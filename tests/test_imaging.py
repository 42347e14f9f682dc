"""The shared image module: decoding, colour modes, limits, geometry."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imaging


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(w: int = 300, h: int = 200) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def test_module_is_torch_free():
    code = "import sys, imaging; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing imaging must not import torch"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_decode_to_256(fmt):
    arr = imaging.load(encode(gradient(), fmt))
    assert arr.shape == (3, 256, 256) and arr.dtype == np.uint8, f"{fmt}: {arr.shape} {arr.dtype}"


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (256, 256), (40, 28)])
def test_shorter_side_256_and_centre_crop(size):
    img = gradient(*size)
    arr = imaging.resize_center(img)
    assert arr.shape == (3, 256, 256)
    # The centre crop keeps the middle: the red gradient's mean there is ~127.
    assert abs(float(arr[0].mean()) - 127.5) < 8, f"not centred for {size}: {arr[0].mean()}"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    rotated = imaging.decode(encode(img, "JPEG", exif=exif.tobytes()))
    assert rotated.size == (200, 400), "EXIF orientation 6 must swap width and height"
    top = np.asarray(rotated)[:100].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60, f"after rotation the blue half is on top, got mean RGB {top}"


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr16 = np.full((64, 64), 32768, dtype=np.uint16)
    data = encode(Image.fromarray(arr16), "PNG")
    rgb = np.asarray(imaging.decode(data))
    assert rgb.shape == (64, 64, 3)
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1, f"32768/65535 should map to ~128, got {rgb[0, 0]}"


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 0, 255), (0, 0, 16, 32))  # left half opaque black
    rgb = np.asarray(imaging.decode(encode(img, "PNG")))
    assert tuple(rgb[0, 31]) == imaging.BACKGROUND, f"transparent pixels show the background, got {rgb[0, 31]}"
    assert tuple(rgb[0, 0]) == (0, 0, 0)


def test_cmyk_jpeg_and_palette_and_grey():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    rgb = np.asarray(imaging.decode(encode(cmyk, "JPEG")))
    assert rgb[20, 20, 0] > 200 and rgb[20, 20, 1] < 60, f"CMYK red decoded as {rgb[20, 20]}"
    grey = imaging.decode(encode(Image.new("L", (10, 10), 77), "PNG"))
    assert grey.mode == "RGB" and np.asarray(grey)[0, 0].tolist() == [77, 77, 77]
    pal = imaging.decode(encode(Image.new("RGB", (10, 10), (10, 200, 30)).convert("P"), "PNG"))
    assert pal.mode == "RGB"


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    rgb = np.asarray(imaging.decode(data))
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 1] < 50, f"first frame is red, got {rgb[0, 0]}"


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"hello, this is plain text, not an image\n", "not a recognised image"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a recognised image"),
    ],
)
def test_bad_bytes_name_the_problem(data, words):
    with pytest.raises(imaging.ImageError, match=words):
        imaging.load(data)


def test_truncated_jpeg(photo_path):
    data = photo_path.read_bytes()
    with pytest.raises(imaging.ImageError, match="truncated"):
        imaging.load(data[: len(data) // 3])


def test_decompression_bomb_refused_before_decoding():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(imaging.ImageError, match=r"too large.*(100000x100000|10000000000 pixels)"):
        imaging.load(png)


def test_sniff_by_content(photo_path):
    assert imaging.sniff(photo_path.read_bytes()) == "JPEG"
    assert imaging.sniff(b"#!/bin/sh\necho not an image\n") is None


def test_jpeg_draft_decode_within_stated_tolerance(photo_path):
    """The reduced-size JPEG decode gives the same 256 image within a mean |delta| of 2 levels."""
    big = Image.open(photo_path).convert("RGB").resize((2048, 2400), Image.BICUBIC)
    data = encode(big, "JPEG", quality=92)
    fast = imaging.load(data, draft=True).astype(np.int16)
    full = imaging.load(data, draft=False).astype(np.int16)
    diff = np.abs(fast - full)
    assert diff.mean() <= 2.0, f"draft decode differs by mean {diff.mean():.2f} levels"
    assert np.percentile(diff, 99) <= 16, f"99th percentile difference {np.percentile(diff, 99)}"


def test_ten_crops_match_torchvision(photo_path):
    import torch
    from torchvision.transforms import TenCrop

    image = imaging.load(photo_path)
    ours = imaging.ten_crops(image)
    theirs = torch.stack(TenCrop(imaging.CROP)(torch.from_numpy(image))).numpy()
    assert ours.shape == (10, 3, 224, 224)
    np.testing.assert_array_equal(ours, theirs, err_msg="crop geometry differs from torchvision's TenCrop")
