"""The CPU a figure was measured on, and the features that decide the fast path.

Every benchmark prints and records ``describe()``: a speed means nothing without the CPU.
The same flags choose the precision of the CPU runtimes (bf16 where the CPU computes it
natively: AMX or AVX512-BF16) and whether training uses bf16 autocast.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

# The flags (Linux /proc/cpuinfo names) that change which kernels run fast for AlexNet.
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


@lru_cache(maxsize=None)
def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor listed; the platform's answer where unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.read().split("\n\n", 1)[0]
    except OSError:
        first = ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, frozenset((fields.get("flags") or fields.get("Features") or "").split())


def flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """All feature flags of the first CPU (empty where /proc/cpuinfo is unreadable)."""
    return _cpuinfo(path)[1]


def has_native_bf16(cpu_flags: frozenset[str] | set[str] | None = None) -> bool:
    """True where bf16 matrix products run in hardware: AMX-BF16 or AVX512-BF16."""
    cpu_flags = flags() if cpu_flags is None else cpu_flags
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags))


def cores() -> int:
    """Cores this process may run on (the affinity mask, as a container limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe(path: str = "/proc/cpuinfo") -> dict:
    """{"model": ..., "cores": N, "flags": {flag: bool}} for benchmark outputs."""
    model, all_flags = _cpuinfo(path)
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": cores(),
        "flags": {name: name in all_flags for name in FLAGS_THAT_MATTER},
    }


def line(info: dict | None = None) -> str:
    """One printable line: 'AMD EPYC, 2 cores, avx512_vnni avx512_bf16' (the flags present)."""
    info = info or describe()
    present = " ".join(name for name, on in info["flags"].items() if on) or "none of " + ", ".join(FLAGS_THAT_MATTER)
    return f"{info['model']}, {info['cores']} cores, {info['machine']}; flags: {present}"
