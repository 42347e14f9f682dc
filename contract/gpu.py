"""The GPUs and the TensorRT this host offers, without importing CUDA or torch.

``nvidia-smi`` answers for the GPUs (a fake one on PATH answers in tests); the TensorRT
runtime's version comes from the ``libnvinfer.so.X.Y.Z`` the dynamic linker knows (the one
Triton's TensorRT backend loads).  A plan runs only on the GPU model (compute capability)
and the TensorRT version that built it, so ``plan_matches`` compares a plan's record with
this host before anything serves it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib", "/opt/tensorrt/lib")


def visible_gpus(smi: str = "nvidia-smi") -> list[dict[str, str]]:
    """[{"name": ..., "compute_capability": "9.0"}] per visible GPU; [] without a driver or GPU."""
    binary = shutil.which(smi)
    if not binary:
        return []
    try:
        out = subprocess.run([binary, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        name, _, cap = line.rpartition(",")
        if name.strip():
            gpus.append({"name": name.strip(), "compute_capability": cap.strip()})
    return gpus


def libnvinfer_version(dirs: tuple[str, ...] = _LIB_DIRS) -> str | None:
    """The installed TensorRT runtime ("10.5.0"), from libnvinfer.so.X.Y.Z; None where absent."""
    extra = tuple(p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p)
    found = []
    for folder in extra + dirs:
        for path in glob.glob(os.path.join(folder, "libnvinfer.so.*.*.*")):
            match = re.search(r"libnvinfer\.so\.(\d+\.\d+\.\d+)$", path)
            if match:
                found.append(match.group(1))
    return max(found, key=lambda v: tuple(int(x) for x in v.split("."))) if found else None


def plan_matches(record: dict, gpus: list[dict[str, str]], tensorrt_version: str | None) -> tuple[bool, str]:
    """(True, "") when a plan built as ``record`` (export.json's "tensorrt") runs here, else (False, why)."""
    if not gpus:
        return False, "no GPU is visible (nvidia-smi)"
    built_cap, built_trt = record.get("compute_capability"), record.get("tensorrt_version")
    if not built_cap or not built_trt:
        return False, "the plan's record lacks the GPU or TensorRT version it was built for"
    here = gpus[0]
    if built_cap != here["compute_capability"]:
        return False, f"the plan was built for {record.get('gpu', '?')} (sm {built_cap}); this is {here['name']} (sm {here['compute_capability']})"
    if tensorrt_version and _major_minor_patch(built_trt) != _major_minor_patch(tensorrt_version):
        return False, f"the plan was built with TensorRT {built_trt}; this host runs TensorRT {tensorrt_version}"
    return True, ""


def _major_minor_patch(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by the GPU's name as CUDA reports it
# ("NVIDIA H100 80GB HBM3" is the SXM part).  NVIDIA's datasheets print the sparse figure
# (1,979 for the H100 SXM and the H200, 1,513 for the H100 PCIe): half of it is the dense peak.
# First match wins, so the PCIe and NVL names come before the plain "H100".
_BF16_DENSE_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", None),  # its datasheet's figure covers a pair of boards: no per-GPU peak claimed here
    ("H200 NVL", None),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM5 ("H100 80GB HBM3", "H100 SXM5 80GB")
)


def bf16_peak_tflops(name: str) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s, which entry matched) for a GPU named ``name``; (None, why)
    for a GPU this table does not know -- a fraction of peak is then not computed."""
    for key, peak in _BF16_DENSE_TFLOPS:
        if key.lower() in name.lower():
            if peak is None:
                return None, f"{name}: no per-GPU bf16 peak is recorded for {key} here"
            return peak, f"{key}: {peak:g} dense bf16 TFLOP/s (NVIDIA's datasheet, half its sparse figure)"
    return None, f"{name}: not a GPU whose bf16 peak is recorded here (H100 SXM/PCIe, H200)"
