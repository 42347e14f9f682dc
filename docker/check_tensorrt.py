"""Build-time check: the tensorrt wheel is the version of the image's libnvinfer.

A plan built by one TensorRT does not load in another, and Triton's TensorRT backend runs
plans with the image's libnvinfer, so the wheel that builds them must be that same version.
Exits non-zero with one line naming both versions when they differ.
"""

import glob
import re
import sys

import tensorrt

libs = sorted(
    (re.search(r"\.so\.(\d+\.\d+\.\d+)", path).group(1) for path in glob.glob("/usr/lib/x86_64-linux-gnu/libnvinfer.so.*.*.*")),
    key=lambda v: tuple(int(x) for x in v.split(".")),
)
if not libs or tensorrt.__version__.split(".")[:3] != libs[-1].split("."):
    sys.exit(f"tensorrt wheel {tensorrt.__version__} does not match this image's libnvinfer {libs}")
print(f"tensorrt {tensorrt.__version__} matches libnvinfer {libs[-1]}")
