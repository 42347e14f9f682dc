"""alexnet-tune against a real Triton: a small model, a tiny budget."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import serving
from tests.conftest import ROOT


def _run(*args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet_server.clients.tune", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def tuned(served_repository, module_tmp):
    """A copy of the served repository (models linked) that alexnet-tune searched with a tiny budget."""
    repo = module_tmp / "repo"
    shutil.copytree(served_repository, repo, copy_function=os.link)
    out = module_tmp / "tune"
    proc = _run("--repository", str(repo), "--config", "cpu-f32", "--budget-s", "1", "--concurrency", "1,4", "--duration", "2", "--warmup", "1",
                "--p99-ms", "100000", "--out", str(out), "--no-progress")  # fmt: skip
    return repo, out, proc


def test_the_search_runs_and_reports(tuned):
    repo, out, proc = tuned
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "tune.json").read_text())
    assert report["tuned_from"] == "cpu-f32" and report["candidates"] and "budget" in report.get("stopped", "budget")
    first = report["candidates"][0]
    assert first["score"] > 0 and [lv["concurrency"] for lv in first["levels"]] == [1, 4], first
    assert set(first["levels"][0]["server_ms"]) == {"classify", "preprocess", "alexnet"}, "Triton's own split of the time, per model"
    assert (out / "tune.csv").read_text().splitlines()[0].startswith("candidate,") and (out / "tune.png").stat().st_size > 10_000
    assert report["outcome"].startswith(("tuned:", "the default is kept")), report["outcome"]


def _served_probs(repo, config, tmp, photo):
    from alexnet_server.clients import Classifier

    server = serving.start(repo, tmp / f"{config}.log", config=config)
    try:
        from alexnet_server.clients.protocol import Connection, bytes_batch

        conn = Connection(server.grpc_url, "grpc")
        info = conn.describe("classify")
        probs = conn.infer(info, bytes_batch([photo]))
        conn.close()
        with Classifier(server.grpc_url) as clf:
            clf.classify_one(photo)
        return probs, server.log.with_suffix(".out").read_text()
    finally:
        server.stop()


def test_the_tuned_config_is_one_triton_serves_with_the_same_probabilities(tuned, tmp_path, photo_path):
    """A tuned config written by hand from the search's own apply (whatever the tiny budget chose), served as 'tuned'."""
    from alexnet_server.clients import tune
    from alexnet_server.contract import machine

    repo, _, _ = tuned
    base = tune.read_base(repo, "cpu-f32")
    space = tune.knobs(base.configs["alexnet"], False, 2)
    settings = {**base.defaults(space), "alexnet queue delay (us)": "0", "alexnet images per run": "2"}
    tune.write_configs(repo, "tuned", base.apply(settings, space), "a test's tuned config")
    (repo / "alexnet" / "configs" / "tuned.json").write_text(json.dumps({"machine": machine.describe(), "tuned_from": "cpu", "version": 1}))
    photo = photo_path.read_bytes()
    default, _ = _served_probs(repo, "cpu-f32", tmp_path, photo)
    tuned_probs, out = _served_probs(repo, "tuned", tmp_path, photo)
    assert "alexnet config 'tuned'" in out
    np.testing.assert_allclose(tuned_probs, default, rtol=0, atol=1e-6)


def test_a_tuned_config_from_another_machine_falls_back_with_a_warning(tuned, tmp_path):
    from alexnet_server.clients import tune
    from alexnet_server.contract import machine

    repo, _, _ = tuned
    base = tune.read_base(repo, "cpu")
    tune.write_configs(repo, "tuned", base.configs, "a test's tuned config")
    other = machine.describe()
    other["cpu"] = {**other["cpu"], "model": "Another CPU", "cores": 64}
    (repo / "alexnet" / "configs" / "tuned.json").write_text(json.dumps({"machine": other, "tuned_from": "cpu", "version": 1}))
    server = serving.start(repo, tmp_path / "auto.log", config="auto")
    try:
        out = server.log.with_suffix(".out").read_text()
    finally:
        server.stop()
    assert "WARNING: the tuned config is not used: it was measured on another CPU" in out and "alexnet config 'cpu'" in out, out[-2000:]
    (repo / "alexnet" / "configs" / "tuned.json").write_text(json.dumps({"machine": machine.describe(), "tuned_from": "cpu", "version": 1}))
    server = serving.start(repo, tmp_path / "auto2.log", config="auto")
    try:
        out = server.log.with_suffix(".out").read_text()
    finally:
        server.stop()
    assert "alexnet config 'tuned' (alexnet-tune's config, measured here" in out and "WARNING" not in out, out[-2000:]


def test_an_interrupt_keeps_what_was_measured(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo, copy_function=os.link)
    out = tmp_path / "tune"
    proc = subprocess.Popen([sys.executable, "-m", "alexnet_server.clients.tune", "--repository", str(repo), "--config", "cpu-f32", "--concurrency", "1",
                             "--duration", "1", "--warmup", "0", "--out", str(out), "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not ((out / "tune.json").is_file() and json.loads((out / "tune.json").read_text())["candidates"]):
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    report = json.loads((out / "tune.json").read_text())
    assert proc.returncode == 130 and report["outcome"] == "interrupted" and report["candidates"], stderr[-2000:]
    assert "Traceback" not in stderr and "measured so far" in stderr
    assert not list(repo.glob("*/configs/tune-candidate.pbtxt")), "the candidate's config is removed"
