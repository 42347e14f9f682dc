"""Export checks itself: the written file against the reference it came from, on the same inputs.

- Same precision (parity): ONNX Runtime and the TorchScript file against the PyTorch
  ``CropAverage``, OpenVINO f32 against ONNX Runtime: random images and real photographs at
  N = 1, 3 and 8; max |dPROBS| within the tolerance and the same top-5 (up to exact ties).
- Reduced precision (gates): OpenVINO bf16 and int8 against fp32 on held-back images: top-1
  agreement >= ``MIN_AGREEMENT`` or the export is refused (``--accept-disagreement`` writes
  it anyway and export.json records it).  A TensorRT engine is compared with ONNX Runtime on
  the same input cases (``export.tensorrt_engine``'s tolerance and top-1 floor).  ``cpu_precision_gates`` runs them for the
  CPU configs' runtime and times what passed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alexnet_server import imaging
from alexnet_server.contract import cpu
from alexnet_server.runtime import RuntimeUnavailable, Version, served_configs
from alexnet_server.runtime import precision as precision_policy
from alexnet_server.runtime.version import CPU_RUNTIMES, runs_here

BATCH_SIZES = (1, 3, 8)
ONNX_TOLERANCE = 1e-5
OPENVINO_F32_TOLERANCE = 1e-4  # oneDNN's kernels sum in another order than ONNX Runtime's
MIN_AGREEMENT = 0.995  # top-1 agreement of a reduced precision with fp32 on held-back images
# On the sample photographs (shifted, mirrored views), a sanity floor: they are out of any
# training set's distribution, where near-ties make a flip cheap (1 of 16 views flipped for a
# good INT8 model of Fashion-MNIST that agreed on 99.75% of 2,000 test images), but a broken
# calibration flips most of them.  They are the gate itself only when no data set is at hand.
PHOTO_FLOOR = 0.85
# Images per inference run in the gates.  A run holds every crop's activations (~50 MB an image
# in fp32), and ONNX Runtime's arena keeps the largest run's: 200 held-back images in one run
# peaked at 16.7 GiB in export; 8 at a time, at 4.1 GiB (quantization's peak).
IMAGES_PER_RUN = 8
TIE = 1e-6  # probabilities closer than this may swap places in a top-5 without it being a mismatch


class CheckFailed(RuntimeError):
    """The exported model does not reproduce its reference; nothing is written."""


@dataclass
class Report:
    max_abs_diff: float = 0.0
    top5_mismatches: int = 0
    top1_agreement: float = 1.0
    images: int = 0
    cases: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.images} images ({', '.join(self.cases)}): max |dPROBS| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {self.top1_agreement:.2%}, top-5 mismatches {self.top5_mismatches}"
        )


def photo_batch(paths: Sequence[Path], n: int) -> np.ndarray:
    """``n`` 256 images from the photographs: each photo, then shifted and mirrored views of them."""
    base = [imaging.load(p) for p in paths]
    if not base:
        raise CheckFailed("no photographs to check against")
    out = []
    for i in range(n):
        img = base[i % len(base)]
        k = i // len(base)
        out.append(np.ascontiguousarray(np.roll(img, 17 * k, axis=2)[:, :, :: (-1 if k % 2 else 1)]))
    return np.stack(out)


def input_cases(photos: Sequence[Path], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for n in BATCH_SIZES:
        cases.append((f"random N={n}", rng.integers(0, 256, size=(n, 3, imaging.SIZE, imaging.SIZE), dtype=np.uint8)))
        cases.append((f"photos N={n}", photo_batch(photos, n)))
    return cases


def _top5_mismatches(reference: np.ndarray, candidate: np.ndarray) -> int:
    bad = 0
    k = min(5, reference.shape[1])
    for ref, cand in zip(reference, candidate):
        ref_top, cand_top = np.argsort(-ref, kind="stable")[:k], np.argsort(-cand, kind="stable")[:k]
        if list(ref_top) == list(cand_top):
            continue
        # A swap between classes whose reference probabilities tie is not a mismatch.
        if not all(abs(ref[a] - ref[b]) <= TIE for a, b in zip(ref_top, cand_top) if a != b):
            bad += 1
    return bad


def compare(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    cases: list[tuple[str, np.ndarray]],
) -> Report:
    report = Report()
    agree = 0
    for name, batch in cases:
        ref, cand = reference(batch), candidate(batch)
        if ref.shape != cand.shape:
            raise CheckFailed(f"{name}: output shape {cand.shape}, expected {ref.shape}")
        report.max_abs_diff = max(report.max_abs_diff, float(np.abs(ref - cand).max()))
        report.top5_mismatches += _top5_mismatches(ref, cand)
        agree += int((ref.argmax(1) == cand.argmax(1)).sum())
        report.images += len(batch)
        report.cases.append(name)
    report.top1_agreement = agree / max(report.images, 1)
    return report


def torch_runner(classifier) -> Callable[[np.ndarray], np.ndarray]:
    """A ``torch.nn.Module`` (IMAGE -> PROBS) as a numpy callable."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(batch)).numpy()

    return run


def parity(
    what: str, reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
    photos: Sequence[Path], tolerance: float,
) -> Report:
    """Same-precision check; raises CheckFailed naming ``what`` beyond ``tolerance`` or on a top-5 mismatch."""
    report = compare(reference, candidate, input_cases(photos))
    if report.max_abs_diff > tolerance or report.top5_mismatches:
        raise CheckFailed(f"{what} disagree: {report.line()} (allowed: {tolerance:g}, no top-5 mismatch)")
    return report


def check_onnx(classifier, staged: Version, photos: Sequence[Path]) -> Report:
    """model.onnx in ONNX Runtime against the PyTorch classifier it was exported from."""
    return parity("ONNX Runtime and PyTorch", torch_runner(classifier), staged.open("onnxruntime", "f32", gated=False), photos, ONNX_TOLERANCE)


def agreement(expected: np.ndarray, candidate: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = IMAGES_PER_RUN) -> dict:
    """Top-1 agreement and max |dPROBS| of ``candidate`` on uint8 ``images`` [N,3,256,256]
    against ``expected`` (the fp32 PROBS [N,C] of the same images), ``batch`` images a run."""
    images = np.asarray(images)
    got = np.concatenate([candidate(images[i : i + batch]) for i in range(0, len(images), batch)])
    return {
        "images": len(images),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()) if len(images) else 1.0,
        "max_abs_diff": float(np.abs(expected - got).max()) if len(images) else 0.0,
    }


def gate(precision: str, held_back: dict | None, photos: dict, accept: bool) -> dict:
    """The reduced-precision gate on two agreement reports (``agreement``): the held-back data
    set's images >= MIN_AGREEMENT and the photo views >= PHOTO_FLOOR, or, without a data set
    (``held_back`` None), the photo views >= MIN_AGREEMENT.  Raises CheckFailed naming what
    failed unless ``accept``; returns the record for export.json."""
    failed = []
    if held_back is not None and held_back["top1_agreement"] < MIN_AGREEMENT:
        failed.append(f"agrees with fp32 on {held_back['top1_agreement']:.1%} of {held_back['images']} held-back images (needs >= {MIN_AGREEMENT:.1%})")
    floor = PHOTO_FLOOR if held_back is not None else MIN_AGREEMENT
    if photos["top1_agreement"] < floor:
        failed.append(f"agrees with fp32 on {photos['top1_agreement']:.1%} of {photos['images']} photo views (needs >= {floor:.1%})")
    if failed and not accept:
        raise CheckFailed(f"{precision} " + "; ".join(failed) + " (--accept-disagreement writes it anyway, noted in export.json)")
    return {"held_back": held_back, "photos": photos, "passed": not failed, "accepted_below_threshold": bool(failed)}


def cpu_precision_gates(staged: Version, held_back: np.ndarray | None, views: np.ndarray, photos: Sequence[Path], accept: bool,
                        source_of_images: str) -> dict:  # fmt: skip
    """export.json's ``cpu_precisions``: OpenVINO, the CPU configs' runtime, on the staged files:
    f32 by parity with ONNX Runtime, bf16 (where this CPU has it) and int8 (where quantized) by
    agreement with fp32 (``gate``), then every precision that passed timed on this CPU.

    ``alexnet-serve --config cpu`` serves only the precisions that passed (or were accepted
    with --accept-disagreement), the fastest measured first (``runtime.precision``)."""
    reference = staged.open("onnxruntime", "f32", max_images_per_run=IMAGES_PER_RUN, gated=False)
    record: dict = {"gate_images": source_of_images, "cpu": cpu.describe()}
    try:
        f32 = staged.open("openvino", "f32", gated=False)
    except RuntimeUnavailable as exc:
        return {**record, "skipped": str(exc)}
    report = parity("OpenVINO f32 and ONNX Runtime", reference, f32, photos, OPENVINO_F32_TOLERANCE)
    print(f"OpenVINO f32 vs ONNX Runtime: {report.line()}")
    record["f32"] = {"check": report.__dict__, "passed": True}
    expected = {"held_back": None if held_back is None else reference(held_back), "photos": reference(views)}
    for precision in ("bf16", "int8"):
        if precision == "int8" and not staged.has("int8"):
            continue
        if precision == "bf16" and not cpu.has_native_bf16():
            record[precision] = {"skipped": "this CPU has neither AMX nor AVX512-BF16: bf16 not checked, not served from this export"}
            continue
        candidate = staged.open("openvino", precision, gated=False)
        on_data = None if held_back is None else agreement(expected["held_back"], candidate, held_back)
        on_photos = agreement(expected["photos"], candidate, views)
        for name, report in (("held-back images", on_data), ("photo views", on_photos)):
            if report is not None:
                print(f"OpenVINO {precision} vs fp32: top-1 agreement {report['top1_agreement']:.2%} on {report['images']} {name}, "
                      f"max |dPROBS| {report['max_abs_diff']:.4f}")  # fmt: skip
        record[precision] = gate(f"OpenVINO {precision}", on_data, on_photos, accept)
    # The cpu config serves the fastest of these, in either CPU runtime, on the CPU it runs on:
    # time them here, where they were just built; a server on another kind of CPU times them again at start.
    passed = dataclasses.replace(staged.record, cpu_precisions=record).allowed_precisions()
    candidates = [precision_policy.key(rt, p) for rt in CPU_RUNTIMES for p in ("f32", "bf16", "int8") if p in passed and runs_here(rt, p)]
    served = served_configs()["cpu"]  # timed as the cpu config runs them: its threads, streams and runs
    rates = served.time_candidates(staged, candidates)
    record["timings"] = {"cpu": record["cpu"], "max_images_per_run": served.timing_images(), "images_per_s": rates}
    print("on this CPU, images/s (10-crop, in-process): " + ", ".join(f"{c} {r:.2f}" for c, r in sorted(rates.items(), key=lambda x: -x[1])))
    return record
