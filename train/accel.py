"""Speed settings as values, not branches in the loop: autocast, memory format, torch.compile.

bf16 autocast runs on CUDA and on CPUs that compute bf16 in hardware (AMX or AVX512-BF16);
elsewhere CPU bf16 is emulated and slower than fp32, so ``--amp`` is a no-op there.
Measured on a 2-core AMD EPYC with AVX512-BF16 (paper arch, batch 64, forward + backward + SGD,
docs/RESULTS.md): eager fp32 18.5 img/s, eager bf16 23.9 (channels_last 22.6), torch.compile
fp32 28.8, torch.compile bf16 34.8-37.1, and with channels_last 39.3-39.6.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable

import torch
from torch import nn

from alexnet_server.contract import cpu


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
