"""GPU JPEG decode (imaging/gpu.py): the routing runs everywhere; the pixels where CUDA exists."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alexnet_server import imaging
from alexnet_server.imaging import gpu
from tests.helpers import encode


def photo(size=(500, 375), orientation: int = 1, mode: str = "RGB") -> bytes:
    img = Image.open(imaging.sample_photographs()[0]).convert("RGB").resize(size)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.convert(mode), "JPEG", quality=90, exif=exif.tobytes())


def test_what_takes_the_gpu_path():
    assert gpu.plan(photo(), imaging.MAX_PIXELS) == gpu.Plan(500, 375, 1)
    assert gpu.plan(photo(orientation=6), imaging.MAX_PIXELS).orientation == 6
    assert gpu.plan(photo(mode="L"), imaging.MAX_PIXELS) is not None, "grey JPEGs decode to RGB on the GPU"
    assert gpu.plan(photo(mode="CMYK"), imaging.MAX_PIXELS) is None, "nvJPEG has no CMYK: the CPU path"
    assert gpu.plan(encode(Image.new("RGB", (64, 64)), "PNG"), imaging.MAX_PIXELS) is None
    assert gpu.plan(photo(size=(2000, 100)), imaging.MAX_PIXELS) is None, "extreme aspect ratios: the CPU path"
    assert gpu.plan(b"\xff\xd8\xff truncated", imaging.MAX_PIXELS) is None
    assert gpu.plan(photo(), 1000) is None, "over the server's pixel limit: the CPU path refuses it with the reason"


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1024, 768), (3000, 2000)])
@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_gpu_pixels_within_the_stated_tolerance(size, orientation):
    if reason := gpu.unavailable():
        pytest.skip(reason)
    data = photo(size, orientation)
    (got,) = gpu.load_batch([data], [gpu.plan(data, imaging.MAX_PIXELS)])
    expected = imaging.load(data)
    assert got is not None and got.shape == expected.shape == (3, 256, 256)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.mean() <= gpu.MEAN_TOLERANCE, f"{size} orientation {orientation}: mean |delta| {diff.mean():.2f}"


@pytest.mark.gpu
def test_a_bad_jpeg_in_a_gpu_batch_costs_only_itself():
    if reason := gpu.unavailable():
        pytest.skip(reason)
    good = photo()
    bad = good[: len(good) // 3]
    plans = [gpu.Plan(500, 375, 1)] * 3
    out = gpu.load_batch([good, bad, good], plans)
    assert out[0] is not None and out[2] is not None and out[1] is None
