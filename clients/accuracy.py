"""Top-1 accuracy of an alexnet-label output whose images sit in folders named by class index.

    python -m alexnet_server.clients.accuracy runs/demo/labels-10crop.csv --labels served/alexnet/labels.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def accuracy(rows: list[dict], labels: list[str]) -> dict:
    index = {name: i for i, name in enumerate(labels)}
    scored = [r for r in rows if not r.get("error")]
    correct = sum(1 for r in scored if index.get(r["labels"].split(";")[0]) == int(Path(r["path"]).parent.name))
    return {"images": len(rows), "labelled": len(scored), "failed": len(rows) - len(scored),
            "top1_accuracy": correct / len(scored) if scored else 0.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.clients.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="an alexnet-label CSV output")
    parser.add_argument("--labels", type=Path, required=True, help="the model's labels.txt (index order)")
    args = parser.parse_args(argv)
    with open(args.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(json.dumps(accuracy(rows, args.labels.read_text().splitlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
