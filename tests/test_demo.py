"""The README's main command, shortened: a few training steps -> export -> serve -> label -> bench."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import serving
from tests.conftest import ROOT, make_fashion_like


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path):
    data = make_fashion_like(tmp_path / "fashion", n_train=48, n_val=30)
    out = tmp_path / "demo"
    repo = tmp_path / "served"
    http, grpc, metrics = serving.free_ports(3)
    env = {
        **os.environ, "DEMO_OUT": str(out), "DEMO_DATA": str(data), "DEMO_IMAGES": "20", "DEMO_BENCH_S": "2",
        "DEMO_TRAIN_ARGS": "--preset demo --epochs 1 --train-limit 32 --val-limit 8 --stats-images 32 --workers 0 --batch-size 16",
        # A model trained on 32 images has near-tied probabilities: its reduced precisions cannot be
        # expected to pass the gates, so the demo's export is told to write them anyway (recorded).
        "DEMO_EXPORT_ARGS": "--int8 --calibration-images 16 --gate-images 10 --accept-disagreement",
        "DEMO_HTTP_PORT": str(http), "DEMO_GRPC_PORT": str(grpc), "DEMO_METRICS_PORT": str(metrics),
        "DEMO_REPOSITORY": str(repo), "DEMO_KEEP_SERVING": "0",
    }  # fmt: skip
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The accuracy the demo reports is the share of rows whose label names the folder's class.
    labels = (repo / "alexnet" / "labels.txt").read_text().splitlines()
    with open(out / "labels-10crop.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    correct = sum(labels.index(r["labels"]) == int(Path(r["path"]).parent.name) for r in rows)
    accuracy = json.loads((out / "served-accuracy.json").read_text())
    assert len(rows) == accuracy["images"] == accuracy["labelled"] == 20 and accuracy["failed"] == 0, accuracy
    assert accuracy["top1_accuracy"] == correct / 20, (accuracy, correct)
    assert f"10-crop: {correct / 20:.4f} on 20 images" in proc.stdout
    assert "alexnet config 'cpu'" in (out / "serve.log").read_text()
    levels = json.loads((out / "bench" / "results.json").read_text())["levels"]
    assert {lv["target"] for lv in levels} == {"served", "inprocess"} and all(lv["throughput"] > 0 and not lv["errors"] for lv in levels)
    assert not subprocess.run(["git", "status", "--porcelain", "--", "model_repository"], cwd=ROOT, capture_output=True, text=True).stdout, \
        "the demo must not write into the tracked template"
