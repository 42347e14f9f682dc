"""Which CPU runtime and precision serve a version: the fastest measured on this CPU among those export's gates passed.

DESIGN.md promises the fastest measured CPU runtime for the CPU it runs on.  Export times
every gated precision in OpenVINO right after building the files and records the figures
with the CPU (``cpu.describe()``); a server on the same kind of CPU uses them as they are,
one on another kind times the candidates again when the model loads (seconds).  The CPU's
flags only order the candidates, breaking a tie within 3%: they never decide alone (an AVX2
CPU without VNNI still runs int8 1.3x f32 in OpenVINO; docs/RESULTS.md has the tables).

``runtime.version.Version`` is the only caller: it knows the gates and opens the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


# Integer and bf16 matrix units, in the order they are preferred when timings tie.
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
TIE = 0.97  # within 3% of the fastest is a tie: 1.5 s of timing on 2 cores does not tell them apart
TIMING_SECONDS = 1.5  # per precision, after a warm-up run: enough to tell 1.2x apart on 2 cores
# Images per timed run for a caller that runs whole batches and names no served config (a served
# config times runs of its own size: ServedConfig.timing_images).
WHOLE_BATCH_TIMING_IMAGES = 8


def key(runtime: str, precision: str) -> str:
    """A candidate's name in timings and reasons: ``openvino:int8``."""
    return f"{runtime}:{precision}"


def precision_of(candidate: str) -> str:
    """``openvino:int8`` -> ``int8``; a bare precision (export records before the runtime was a
    candidate: OpenVINO's) is itself."""
    return candidate.rpartition(":")[2]


def flag_order(cpu_flags: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The candidates (``runtime:precision``, or bare precisions), those in the precision the
    CPU's units favour first: int8 where it has an integer matrix unit, else bf16 where it
    computes bf16 natively, else f32 (no unit for either: at equal speed the exact precision);
    then the rest (int8, bf16, f32); within a precision, in the order given."""
    flags, allowed = set(cpu_flags), list(dict.fromkeys(allowed))
    precisions = {precision_of(c) for c in allowed}
    first = ("int8" if "int8" in precisions and flags & set(INT8_FLAGS) else
             "bf16" if "bf16" in precisions and flags & set(BF16_FLAGS) else "f32" if "f32" in precisions else None)  # fmt: skip
    ranks = [first] + [p for p in ("int8", "bf16", "f32") if p != first]
    return sorted(allowed, key=lambda c: (ranks.index(precision_of(c)) if precision_of(c) in ranks else len(ranks), allowed.index(c)))


def time_precisions(open_runtime: Callable[[str], Callable], precisions: Iterable[str], images_per_run: int,
                    seconds: float = TIMING_SECONDS) -> dict[str, float]:  # fmt: skip
    """{precision: images/s} in this process: ``open_runtime(precision)`` run on random uint8
    images [2 x images_per_run, 3, 256, 256] (10-crop inside the graph) for ``seconds`` after a
    warm-up run."""
    import numpy as np

    from alexnet_server import imaging
    images = np.random.default_rng(0).integers(0, 256, (2 * images_per_run, 3, imaging.SIZE, imaging.SIZE), dtype=np.uint8)
    rates = {}
    for precision in precisions:
        run = open_runtime(precision)
        run(images)  # the first run compiles and fills caches
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            run(images)
            done += len(images)
        rates[precision] = round(done / elapsed, 2)
    return rates


def same_cpu(a: dict | None, b: dict | None) -> bool:
    """Whether two ``cpu.describe()`` records are one kind of CPU for timing: model, cores, flags."""
    keys = ("model", "cores", "flags")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


def choose(allowed: Iterable[str], recorded: dict | None, here: dict, measure: Callable[[list[str]], dict[str, float]]) -> tuple[str, str]:
    """(candidate, why): the fastest measured on this CPU among ``allowed`` (``runtime:precision``
    pairs, or bare precisions of one runtime).

    ``recorded`` is export's timing record ({"cpu": cpu.describe(), "images_per_s": {...}}); it
    is used when it was taken on this kind of CPU (``here``) and covers every candidate, else
    ``measure(candidates)`` times them now.  A record's bare precisions are OpenVINO's."""
    order = flag_order([f for f, on in here.get("flags", {}).items() if on], allowed)
    if len(order) == 1:
        return order[0], f"{order[0]}: the only candidate export's gates passed"
    recorded = recorded or {}
    rates = {(k if ":" in k or ":" not in order[0] else key("openvino", k)): v for k, v in (recorded.get("images_per_s") or {}).items()}
    if same_cpu(recorded.get("cpu"), here) and all(p in rates for p in order):
        source = "measured at export on this CPU"
    else:
        why_now = "export's timings are from another CPU" if rates else "export recorded no timings"
        rates, source = measure(order), f"measured at start ({why_now})"
    best = max(rates[p] for p in order)
    chosen = next(p for p in order if rates[p] >= TIE * best)
    figures = ", ".join(f"{p} {rates[p]:.2f}" for p in sorted(order, key=lambda p: -rates[p]))
    return chosen, f"{chosen}: fastest {source}, images/s: {figures}"
