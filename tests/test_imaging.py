"""The shared image module: decoding, colour modes, limits, geometry."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from alexnet_server import imaging
from tests.helpers import encode, png_header_only


def gradient(w: int = 300, h: int = 200) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def test_module_is_torch_free():
    code = "import sys; from alexnet_server import imaging; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing imaging must not import torch"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_decode_to_256(fmt):
    arr = imaging.load(encode(gradient(), fmt))
    assert arr.shape == (3, 256, 256) and arr.dtype == np.uint8, f"{fmt}: {arr.shape} {arr.dtype}"


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (256, 256), (40, 28)])
def test_shorter_side_256_and_centre_crop(size):
    img = gradient(*size)
    arr = imaging.load(encode(img, "PNG"))
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
    with pytest.raises(imaging.ImageError, match=r"too large.*(100000x100000|10000000000 pixels)") as info:
        imaging.load(png_header_only(100000, 100000))
    assert info.value.reason == "too_large"


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


def test_ten_crop_boxes_match_torchvision(photo_path):
    import torch
    from torchvision.transforms import TenCrop

    image = imaging.load(photo_path)
    c = imaging.CROP
    ours = np.stack([image[:, t : t + c, l : l + c][:, :, ::-1] if m else image[:, t : t + c, l : l + c]
                     for t, l, m in imaging.ten_crop_boxes()])  # fmt: skip
    theirs = torch.stack(TenCrop(c)(torch.from_numpy(image))).numpy()
    assert ours.shape == (10, 3, 224, 224)
    np.testing.assert_array_equal(ours, theirs, err_msg="crop geometry differs from torchvision's TenCrop")


# --- hostile and odd inputs (../shared/cases, built here from scratch) -------------------------------


def old_pipeline(data: bytes) -> np.ndarray:
    """The pipeline before bounded decoding: the whole image oriented, converted, resized, then cropped."""
    img = Image.open(io.BytesIO(data))
    img.load()
    img = imaging.to_rgb(ImageOps.exif_transpose(img))
    w, h = img.size
    scale = 256 / min(w, h)
    nw, nh = max(256, round(w * scale)), max(256, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - 256) // 2, (nh - 256) // 2
    return np.asarray(img.crop((left, top, left + 256, top + 256))).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(512, 600), (600, 512), (300, 200), (40, 28), (1000, 333)])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_same_pixels_as_resizing_everything_then_cropping(photo_path, size, orientation):
    """Resampling only the region the centre crop keeps gives the old pixels within the stated
    tolerance (README): max 1 grey level, mean <= 0.25 (8-bit rounding between the passes)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.open(photo_path).convert("RGB").resize(size), "PNG", exif=exif.tobytes())
    diff = np.abs(imaging.load(data).astype(int) - old_pipeline(data).astype(int))
    assert diff.max() <= 1 and diff.mean() <= 0.25, (diff.max(), diff.mean())


def _peak_rss_growth_mib(code: str) -> float:
    """Peak resident memory a snippet adds to a fresh interpreter that has imported imaging (MiB)."""
    script = f"""
import resource, imaging, numpy
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{code}
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("width, height", [(1, 8000), (8000, 1), (4, 4000), (1, 100000)])
def test_extreme_aspect_ratios_are_bounded(tmp_path, width, height):
    """A 538-byte 1x8000 PNG used to become a 256x2,048,000 image (2.1 GB); 1x100000 ran out of memory."""
    path = tmp_path / "tall.png"
    Image.new("L", (width, height), 90).save(path)
    growth = _peak_rss_growth_mib(f"a = imaging.load({str(path)!r}); assert a.shape == (3, 256, 256) and int(a[0, 128, 128]) == 90")
    assert growth < 40, f"{width}x{height}: peak grew by {growth:.0f} MiB"


def test_a_large_rgba_png_peaks_at_its_decoded_size(tmp_path):
    """25 MP RGBA (100 MiB decoded): the peak is the decoded source and little more (README bound:
    MAX_DECODE_BYTES + ~1 MB per decode); before, compositing and resizing the whole image took ~5x."""
    path = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (100, 100, 4), dtype=np.uint8)
    Image.fromarray(np.tile(tile, (50, 50, 1)), "RGBA").save(path, compress_level=1)
    decoded_mib = 5000 * 5000 * 4 / 2**20
    growth = _peak_rss_growth_mib(f"a = imaging.load({str(path)!r}); assert a.shape == (3, 256, 256)")
    assert growth <= decoded_mib * 1.1 + 32, f"peak grew by {growth:.0f} MiB for {decoded_mib:.0f} MiB decoded"


def test_decoded_size_over_the_limit_is_refused_from_the_header():
    """Under the pixel limit, but a palette image needs its 8-bit RGBA copy too: 5 bytes a pixel."""
    with pytest.raises(imaging.ImageError, match="needs 477 MiB, over the 400 MiB limit") as info:
        imaging.load(png_header_only(10000, 9999, color_type=3))
    assert info.value.reason == "too_large"


def test_sniff_never_raises_and_metadata_bombs_are_refused_with_a_reason():
    import zlib

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (2 * 2**20), zip=True)  # a 2 MB zTXt chunk, over Pillow's 1 MB limit
    data = encode(Image.new("RGB", (32, 32)), "PNG", pnginfo=info)
    assert zlib.compress(b"x" * 10)  # the chunk is compressed: the file itself is small
    assert len(data) < 64 * 1024
    assert imaging.sniff(data) is not None, "an image, refused later with its reason"
    with pytest.raises(imaging.ImageError, match="metadata too large") as err:
        imaging.load(data)
    assert err.value.reason == "too_large"
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a", bytes(range(256))):
        assert imaging.sniff(junk) is None


def test_unreadable_file_says_permission_denied(tmp_path, photo_path):
    import os

    path = tmp_path / "locked.jpg"
    path.write_bytes(photo_path.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions do not stop reads (covered as a non-root user in test_clients)")
        with pytest.raises(imaging.ImageError, match="permission denied") as info:
            imaging.load(path)
        assert info.value.reason == "unreadable" and imaging.sniff(path) is None
    finally:
        path.chmod(0o644)


def _corrupt_exif(orientation: int) -> bytes:
    """Little-endian EXIF with a damaged TIFF magic number (0 instead of 42) and a Make entry pointing
    far past the data; the orientation entry itself is intact.  Pillow then finds no EXIF at all."""
    import struct

    entries = [
        struct.pack("<HHII", 0x010F, 2, 4000, 0x7FFFFF00),  # Make: ASCII, 4000 bytes at an offset that does not exist
        struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II\x00\x00" + struct.pack("<I", 8) + ifd


def test_corrupt_exif_keeps_the_orientation():
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    data = encode(img, "JPEG", exif=_corrupt_exif(6))
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == (400, 200), "Pillow alone drops the orientation"
    assert imaging.orientation(Image.open(io.BytesIO(data))) == 6
    arr = imaging.load(data)
    top, bottom = arr[:, :64].mean(axis=(1, 2)), arr[:, -64:].mean(axis=(1, 2))
    assert top[2] > 200 and bottom[0] > 200, f"rotated upright: blue on top, red below; got {top}, {bottom}"


def _png_with_sbit(array: np.ndarray, bits: int) -> bytes:
    import struct
    import zlib

    data = encode(Image.fromarray(array), "PNG")
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([bits]) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([bits])) & 0xFFFFFFFF)
    return data[:33] + chunk + data[33:]  # right after IHDR (8 + 25 bytes)


def test_twelve_bit_png_is_scaled_by_its_stated_depth():
    """12-bit data in a 16-bit PNG, sBIT 12: 4095 is white, not 1/16 grey."""
    arr = np.full((64, 64), 4095, dtype=np.uint16)
    arr[:, :32] = 2048
    image = imaging.load(_png_with_sbit(arr, 12))
    assert image[0, 128, 250] == 255 and abs(int(image[0, 128, 5]) - 128) <= 1, image[0, 128, [5, 250]]
    plain = imaging.load(encode(Image.fromarray(arr), "PNG"))  # no sBIT: full 16-bit scale
    assert plain[0, 128, 250] == 16


def test_float_tiff_in_zero_to_one_is_scaled():
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    image = imaging.load(encode(Image.fromarray(arr, "F"), "TIFF"))
    assert image[0].max() >= 250 and image[0].min() <= 5, (image.min(), image.max())
    wide = imaging.load(encode(Image.fromarray(arr * 200 + 20, "F"), "TIFF"))  # 20..220: taken as 0..255
    assert 15 <= wide[0].min() and wide[0].max() <= 225


# Formats Pillow can open but the product does not list: refused from their bytes, before any
# plugin of theirs runs (EPS would start Ghostscript where it is installed).
_UNLISTED = ("EPS", "ICO", "PCX", "TGA", "SGI", "AVIF", "QOI", "ICNS", "DDS", "IM", "JPEG2000", "SPIDER")


@pytest.mark.parametrize("fmt", _UNLISTED)
def test_unlisted_formats_are_refused(fmt):
    data = encode(Image.new("RGB", (16, 16), (10, 20, 30)), fmt)
    with pytest.raises(imaging.ImageError, match="not a recognised image format") as info:
        imaging.load(data)
    assert info.value.reason == "unsupported", f"{fmt}: reason {info.value.reason}"
    assert imaging.sniff(data) is None, f"{fmt} must not even be sniffed as an image"


def test_eps_never_reaches_ghostscript(monkeypatch, tmp_path):
    """A 'gs' first on PATH that records being run: refusing EPS must not start it."""
    marker = tmp_path / "gs-ran"
    fake = tmp_path / "gs"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
    with pytest.raises(imaging.ImageError, match="not a recognised image format"):
        imaging.load(eps)
    assert not marker.exists(), "the EPS bytes reached Ghostscript"


@pytest.mark.parametrize("fmt", imaging.FORMATS)
def test_listed_formats_decode(fmt):
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    assert imaging.load(encode(img, fmt)).shape == (3, 256, 256), fmt
