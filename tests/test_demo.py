"""The README's main command, shortened: a few training steps -> export -> serve -> label -> bench."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests import serving
from tests.conftest import ROOT, make_fashion_like


@pytest.mark.slow
def test_demo_script_end_to_end(tmp_path):
    data = make_fashion_like(tmp_path / "fashion", n_train=48, n_val=30)
    out = tmp_path / "demo"
    http, grpc, metrics = serving.free_ports(3)
    env = {
        **os.environ, "DEMO_OUT": str(out), "DEMO_DATA": str(data), "DEMO_IMAGES": "20", "DEMO_BENCH_S": "2",
        "DEMO_TRAIN_ARGS": "--preset demo --epochs 1 --train-limit 32 --val-limit 8 --stats-images 32 --workers 0 --batch-size 16",
        "DEMO_HTTP_PORT": str(http), "DEMO_GRPC_PORT": str(grpc), "DEMO_METRICS_PORT": str(metrics),
        "DEMO_REPOSITORY": str(tmp_path / "model_repository"), "DEMO_KEEP_SERVING": "0",
    }  # fmt: skip
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    accuracy = json.loads((out / "served-accuracy.json").read_text())
    for crop in ("centre", "10crop"):
        assert accuracy[crop]["images"] == 20 and accuracy[crop]["failed"] == 0, accuracy
        assert 0.0 <= accuracy[crop]["top1_accuracy"] <= 1.0
    assert "Fashion-MNIST test accuracy through Triton (20 images)" in proc.stdout
    levels = json.loads((out / "bench" / "results.json").read_text())["levels"]
    assert {lv["target"] for lv in levels} == {"served", "inprocess"} and all(lv["throughput"] > 0 for lv in levels)
