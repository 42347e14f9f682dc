"""The README's main command, shortened: a few training steps -> export -> serve -> label -> bench."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import threading
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
        "DEMO_REPOSITORY": str(repo),
    }  # fmt: skip
    # As a user runs it: the report, then serving until Ctrl-C (SIGINT to the whole foreground group).
    # SIGINT as at a terminal: a test run started in the background by a non-interactive shell
    # (nohup ... &) inherits SIGINT ignored, and bash cannot trap a signal ignored on entry.
    proc = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    watchdog = threading.Timer(900, os.killpg, (proc.pid, signal.SIGKILL))  # a hung demo fails, it does not hang CI
    watchdog.start()
    stdout = ""
    try:
        for line in proc.stdout:  # the report, then "Serving ... until Ctrl-C.  Try:" and four commands
            stdout += line
            if "until Ctrl-C" in stdout and "alexnet-label" in line:
                break
        assert "until Ctrl-C" in stdout, f"the demo ended (rc {proc.wait()}) before serving:\n{stdout[-3000:]}"
        sample = next(l.split()[1] for l in stdout.splitlines() if "alexnet-classify" in l)
        answer = subprocess.run([str(ROOT / ".venv/bin/alexnet-classify"), sample, "--url", f"127.0.0.1:{grpc}"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert answer.returncode == 0 and answer.stdout.startswith(sample), answer.stdout + answer.stderr
        os.killpg(proc.pid, signal.SIGINT)
        stdout += proc.communicate(timeout=60)[0]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    serve_log = (out / "serve.log").read_text() if (out / "serve.log").is_file() else "(no serve.log)"
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, stdout[-3000:], serve_log[-2000:])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", grpc)) != 0, "Ctrl-C left the server running"
    # The accuracy the demo reports is the share of rows whose label names the folder's class.
    labels = (repo / "alexnet" / "labels.txt").read_text().splitlines()
    with open(out / "labels-10crop.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    correct = sum(labels.index(r["labels"]) == int(Path(r["path"]).parent.name) for r in rows)
    accuracy = json.loads((out / "served-accuracy.json").read_text())
    assert len(rows) == accuracy["images"] == accuracy["labelled"] == 20 and accuracy["failed"] == 0, accuracy
    assert accuracy["top1_accuracy"] == correct / 20, (accuracy, correct)
    assert f"10-crop: {correct / 20:.4f} on 20 images" in stdout
    assert "alexnet config 'cpu'" in (out / "serve.log").read_text()
    levels = json.loads((out / "bench" / "results.json").read_text())["levels"]
    assert {lv["target"] for lv in levels} == {"served", "inprocess"} and all(lv["throughput"] > 0 and not lv["errors"] for lv in levels)
    assert not subprocess.run(["git", "status", "--porcelain", "--", "model_repository"], cwd=ROOT, capture_output=True, text=True).stdout, \
        "the demo must not write into the tracked template"
