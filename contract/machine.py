"""This machine as a served setting depends on it: its CPU (model, cores, the flags that choose
kernels) and its GPUs by name.  A setting measured on one machine (alexnet-tune's config) is
trusted only on a machine that ``same`` calls the same."""

from __future__ import annotations

from alexnet_server.contract import cpu, gpu


def describe() -> dict:
    """{"cpu": cpu.describe(), "gpus": [names]}, JSON-ready."""
    return {"cpu": cpu.describe(), "gpus": [g["name"] for g in gpu.visible_gpus()]}


def line(info: dict) -> str:
    """One line naming the machine ``describe`` recorded."""
    gpus = ", ".join(info.get("gpus") or []) or "no GPU"
    return f"{cpu.line(info.get('cpu') or {})}; {gpus}"


def same(recorded: dict | None, here: dict) -> tuple[bool, str]:
    """(True, "") when ``recorded`` is this kind of machine, else (False, how they differ)."""
    if not recorded:
        return False, "no machine was recorded"
    a, b = recorded.get("cpu") or {}, here.get("cpu") or {}
    for key, what in (("model", "CPU"), ("cores", "core count"), ("flags", "CPU flags")):
        if a.get(key) != b.get(key):
            return False, f"another {what} ({line(recorded)}; this is {line(here)})"
    if sorted(recorded.get("gpus") or []) != sorted(here.get("gpus") or []):
        return False, f"other GPUs ({line(recorded)}; this is {line(here)})"
    return True, ""
