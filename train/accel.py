"""Speed settings as values, not branches in the loop: autocast, memory format, torch.compile.

bf16 autocast runs on CUDA and on CPUs that compute bf16 in hardware (AMX or AVX512-BF16);
elsewhere CPU bf16 is emulated and slower than fp32, so ``--amp`` is a no-op there.
Measured (paper arch, forward + backward + optimiser step, 2 cores, docs/RESULTS.md "Training"):

- AMD EPYC with AVX512-BF16, batch 64: eager fp32 18.5 img/s, eager bf16 23.9 (channels_last
  22.6), torch.compile fp32 28.8, torch.compile bf16 34.8-37.1, and with channels_last 39.3-39.6.
- Intel Xeon with AMX, batch 32: eager bf16 16.3, torch.compile bf16 28.0, with channels_last
  25.9-32.2; eager fp32 17.6, torch.compile fp32 19.0.
- The same Xeon capped to AVX2 (``scripts/emulate_avx2``: what an AVX2-only CPU runs), batch 32,
  fp32: eager 13.4, channels_last 11.7, torch.compile 13.0, both 11.9-13.1.  Compiling costs
  ~40 s and buys nothing there.

``fastest`` turns these into the settings ``alexnet-train --auto-speed`` uses.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable

import torch
from torch import nn

from alexnet_server.contract import cpu


# The settings measured fastest per kind of device (module doc).  The CPU's flags name the kind
# because each kind was measured.  An AVX-512 CPU without bf16 (not seen yet) gets the fp32 row
# too: torch.compile fp32 measured 1.1x eager on the AMX Xeon and 1.6x on the EPYC, worth its
# ~40 s of compiling only in long runs, where --compile can be given.
FASTEST = {
    "cuda": ({"amp": True, "channels_last": True, "compile": False},
             "CUDA: bf16 autocast and channels_last (tensor cores want NHWC); torch.compile not measured on a GPU"),
    "cpu-bf16": ({"amp": True, "channels_last": True, "compile": True},
                 "native bf16 (AMX or AVX512-BF16): bf16 autocast, torch.compile and channels_last measured 1.6-2.1x eager"),
    "cpu": ({"amp": False, "channels_last": False, "compile": False},
            "no native bf16: eager fp32; torch.compile and channels_last measured no faster on AVX2, and compiling costs ~40 s"),
}  # fmt: skip


def fastest(device: torch.device, cpu_flags: frozenset[str] | set[str] | None = None) -> tuple[dict[str, bool], str]:
    """({"amp", "channels_last", "compile": bool}, why): the speed settings measured fastest for
    this kind of device (module doc).  ``cpu_flags``: /proc/cpuinfo's flags (default: this CPU's)."""
    if device.type == "cuda":
        return FASTEST["cuda"]
    return FASTEST["cpu-bf16" if cpu.has_native_bf16(cpu_flags) else "cpu"]


def amp_active(device: torch.device, enabled: bool) -> bool:
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu.has_native_bf16()))


def autocast(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of bf16 autocast contexts, enabled only where bf16 is native (see module doc)."""
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=amp_active(device, enabled))


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last where asked: tensor cores want NHWC, and on a CPU it pays with torch.compile
    (+6% above); in eager CPU mode it measured 5% slower, so it stays a choice, not a default."""
    return torch.channels_last if channels_last else torch.contiguous_format


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled (inductor; the first steps pay ~20-40 s of compiling)."""
    return torch.compile(model) if enabled else model
