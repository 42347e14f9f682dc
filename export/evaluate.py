"""Accuracy of exported ONNX classifiers on a data set, and how often they agree.

    python -m export.evaluate model_repository/alexnet/1/model.onnx model_repository/alexnet/1/model.int8.onnx \\
        --data fashion-mnist --limit 2000 --json accuracy.json

Runs each file in ONNX Runtime on the same images (the shared 256 pipeline) and prints
top-1/top-5 accuracy per file and the top-1 agreement of every file with the first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.check import onnxruntime_runner
from train import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="ONNX classifier files (IMAGE -> PROBS)")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, its IDX folder, or an ImageFolder root (val split)")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of this many images; 0 = all")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        val = data.open_split(args.data, "val")
    except data.DataError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        print(f"evaluate: error: no such model file: {', '.join(missing)}", file=sys.stderr)
        return 2
    indices = data.subset_indices(len(val), args.limit, 1) or list(range(len(val)))
    runners = [onnxruntime_runner(m) for m in args.models]
    top1 = [[] for _ in runners]
    hits1, hits5 = np.zeros(len(runners)), np.zeros(len(runners))
    labels_seen = 0
    for start in tqdm(range(0, len(indices), args.batch_size), desc="evaluate", unit="batch"):
        samples = [val[i] for i in indices[start : start + args.batch_size]]
        samples = [(img, label) for img, label, _ in samples if img is not None]
        batch, labels = np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])
        labels_seen += len(labels)
        for k, run in enumerate(runners):
            probs = run(batch)
            order = np.argsort(-probs, axis=1)
            top1[k].append(order[:, 0])
            hits1[k] += (order[:, 0] == labels).sum()
            hits5[k] += (order[:, :5] == labels[:, None]).any(axis=1).sum()
    firsts = [np.concatenate(t) for t in top1]
    rows = []
    for k, model in enumerate(args.models):
        rows.append({"model": str(model), "images": labels_seen, "top1_accuracy": hits1[k] / labels_seen,
                     "top5_accuracy": hits5[k] / labels_seen, "top1_agreement_with_first": float((firsts[k] == firsts[0]).mean())})  # fmt: skip
        print(f"{model}: top-1 {rows[-1]['top1_accuracy']:.4f}  top-5 {rows[-1]['top5_accuracy']:.4f}  "
              f"agreement with {args.models[0].name} {rows[-1]['top1_agreement_with_first']:.4f}  ({labels_seen} images)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
