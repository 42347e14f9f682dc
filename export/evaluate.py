"""Accuracy of an exported version in each runtime and precision, and how often they agree.

    python -m alexnet_server.export.evaluate served/alexnet/1 --variants onnxruntime:f32,openvino:bf16,openvino:int8 \\
        --data fashion-mnist --limit 2000 --json accuracy.json

Runs every variant (``runtime:precision``, opened by ``runtime.Version`` as the server opens it) on the same
images (the shared 256 pipeline) and prints top-1/top-5 accuracy per variant and its top-1
agreement with the first, the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from alexnet_server.contract import cpu, files
from alexnet_server.runtime import RecordError, Runtime, RuntimeUnavailable, Version
from alexnet_server.imaging import datasets as data


def open_variant(version: Path, spec: str) -> Runtime:
    """``runtime:precision`` (precision f32 where left out) opened as the server opens it, gates included."""
    runtime, _, precision = spec.partition(":")
    return Version(version).open(runtime, precision or "f32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.export.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("version", type=Path, help="an exported version folder (served/alexnet/N)")
    parser.add_argument("--variants", default="onnxruntime:f32,openvino:f32", help="runtime:precision, comma-separated; the first is the reference")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, its IDX folder, or an ImageFolder root (val split)")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of this many images; 0 = all")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        val = data.open_split(args.data, "val")
        variants = {spec: open_variant(args.version, spec) for spec in args.variants.split(",")}
    except (data.DataError, RuntimeUnavailable, RecordError, FileNotFoundError, ValueError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    indices = data.subset_indices(len(val), args.limit, 1) or list(range(len(val)))
    top1 = {spec: [] for spec in variants}
    hits1, hits5 = dict.fromkeys(variants, 0), dict.fromkeys(variants, 0)
    seen = 0
    for start in tqdm(range(0, len(indices), args.batch_size), desc="evaluate", unit="batch"):
        samples = [val[i] for i in indices[start : start + args.batch_size]]
        samples = [(img, label) for img, label, _ in samples if img is not None]
        batch, labels = np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])
        seen += len(labels)
        for spec, run in variants.items():
            order = np.argsort(-run(batch), axis=1)
            top1[spec].append(order[:, 0])
            hits1[spec] += int((order[:, 0] == labels).sum())
            hits5[spec] += int((order[:, :5] == labels[:, None]).any(axis=1).sum())
    firsts = {spec: np.concatenate(t) for spec, t in top1.items()}
    reference = next(iter(variants))
    rows = []
    print(f"CPU: {cpu.line()}")
    for spec, run in variants.items():
        row = {"variant": spec, "runtime": run.describe(), "images": seen, "top1_accuracy": hits1[spec] / seen,
               "top5_accuracy": hits5[spec] / seen, "top1_agreement_with_first": float((firsts[spec] == firsts[reference]).mean())}  # fmt: skip
        rows.append(row)
        print(f"{spec:<18} top-1 {row['top1_accuracy']:.4f}  top-5 {row['top5_accuracy']:.4f}  "
              f"agreement with {reference} {row['top1_agreement_with_first']:.4f}  ({seen} images)")  # fmt: skip
    if args.json:
        files.atomic_write(args.json, json.dumps({"cpu": cpu.describe(), "version": str(args.version), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
