"""Export checks itself: the written file against the reference it came from, on the same inputs.

ONNX Runtime (CPU) against the PyTorch ``CropAverage``: random images and real
photographs at N = 1, 3 and 8; max |dPROBS| <= 1e-5 and the same top-5 (up to exact
ties).  A TensorRT engine against ONNX Runtime: top-1 agreement and max |dPROBS|.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import imaging

BATCH_SIZES = (1, 3, 8)
ONNX_TOLERANCE = 1e-5
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


def sample_photographs() -> list[Path]:
    """Real photographs that ship with an installed dependency (matplotlib's sample data)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return [p for p in (folder / "grace_hopper.jpg", folder / "Minduka_Present_Blue_Pack.png") if p.is_file()]


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


def torch_runner(classifier: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(batch)).numpy()

    return run


def onnxruntime_runner(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(["PROBS"], {"IMAGE": batch})[0]

    return run


def check_onnx(classifier: torch.nn.Module, path: Path, photos: Sequence[Path]) -> Report:
    report = compare(torch_runner(classifier), onnxruntime_runner(path), input_cases(photos))
    if report.max_abs_diff > ONNX_TOLERANCE or report.top5_mismatches:
        raise CheckFailed(f"ONNX Runtime disagrees with PyTorch: {report.line()} (allowed: {ONNX_TOLERANCE:g}, no top-5 mismatch)")
    return report
