"""Top-k as every client gives it: [(label, score)], best first.

From Triton's classification extension (``class_count`` on the output: strings
``score:index:label``, ``parse_top``), or, where the model runs in this process (the Ray engine's
in-process actors), from PROBS with the same order (``from_probs``: highest first, ties by class
index, as Triton sorts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parse_top(entries: np.ndarray) -> list[tuple[str, float]]:
    """Triton's classification strings ``score:index:label`` -> [(label, score)], best first."""
    out = []
    for entry in np.asarray(entries).reshape(-1):
        text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
        score, index, *label = text.split(":", 2)
        out.append((label[0] if label and label[0] else index, float(score)))
    return out


def from_probs(probs: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """PROBS float32 [C] of one image -> the ``k`` best [(label, score)], as Triton's classification
    extension gives them (a class without a label is named by its index)."""
    best = np.argsort(-probs, kind="stable")[:k]
    return [(labels[j] if j < len(labels) else str(j), float(probs[j])) for j in best]
