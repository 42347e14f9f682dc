"""Per-epoch metrics: one JSON line each, and a PNG of the curves redrawn after every epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alexnet_server.contract import files


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Loss (left) and error (right) against epoch; written atomically.  Skipped (with a
    warning) where matplotlib is not installed: the numbers are in metrics.jsonl."""
    try:
        import matplotlib
    except ImportError:
        import logging

        logging.getLogger(__name__).warning("matplotlib is not installed: %s not drawn", path.name)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="val (centre crop)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_err.plot(epochs, [r["train_error"] for r in history], "o-", label="train top-1")
    ax_err.plot(epochs, [r["val_top1_centre_error"] for r in history], "s-", label="val top-1 (centre)")
    ax_err.plot(epochs, [r["val_top5_centre_error"] for r in history], "^-", label="val top-5 (centre)")
    ax_err.set(xlabel="epoch", ylabel="error", title="error", ylim=(0, 1))
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with files.atomic_output(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
