"""One owner for a served config's parameters (runtime.ServedConfig): a change to a config reaches
the server, alexnet-bench's in-process line and the Ray engine's actors alike."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests import serving
from tests.conftest import ROOT


def _edited_copy(served_repository, folder, **parameters):
    """The served repository with its model files linked, not copied, and the cpu config's
    parameters set to ``parameters`` (the pbtxt written anew, so the link's original stays)."""
    repo = folder / "repo"
    shutil.copytree(served_repository, repo, copy_function=os.link)
    path = repo / "alexnet" / "configs" / "cpu.pbtxt"
    text = path.read_text()
    for key, value in parameters.items():
        text, n = re.subn(rf'(key: "{key}"\s*value: \{{ string_value: )"[^"]*"', rf'\1"{value}"', text)
        assert n == 1, f"cpu.pbtxt declares {key} once"
    path.unlink()
    path.write_text(text)
    return repo


def test_threads_and_streams_reach_the_server_the_bench_and_a_ray_actor(served_repository, tmp_path):
    from alexnet_server.clients.label_ray import InProcessModel
    from alexnet_server.runtime import served_configs

    # threads 2, streams 2: neither is what the server, the bench or an actor of one core would pick by itself
    repo = _edited_copy(served_repository, tmp_path, runtime="openvino", threads="2", streams="2")
    assert (served_configs(repo)["cpu"].threads, served_configs(repo)["cpu"].streams) == (2, 2)
    server = serving.start(repo, tmp_path / "triton.log", config="cpu")
    try:
        deadline = time.monotonic() + 60  # alexnet-serve prints the model's own words just after ready
        while not (served := re.search(r"alexnet_0_0: (openvino .*?), model", server.log.with_suffix(".out").read_text())) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served, server.log.with_suffix(".out").read_text()[-2000:]
        out = tmp_path / "bench"
        bench = subprocess.run([sys.executable, "-m", "alexnet_server.clients.bench", "--url", server.grpc_url, "--inprocess", "--concurrency", "1",
                                "--duration", "1", "--warmup", "0", "--repository", str(repo), "--out", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert bench.returncode == 0, bench.stderr[-2000:]
    finally:
        server.stop()
    inprocess = json.loads((out / "results.json").read_text())["meta"]["inprocess_runtime"]
    actor = InProcessModel(str(repo), topk=3, cores=1, gpu=False).model.describe()
    expected = "openvino f32 on CPU, 2 stream(s) (2 thread(s))"
    assert served.group(1) == expected, served.group(1)
    assert inprocess.startswith(expected), inprocess
    assert actor.startswith(expected + ","), actor


def test_a_parameter_the_model_does_not_read_is_refused(tmp_path):
    from alexnet_server.runtime import model_config
    from alexnet_server.runtime.served import ServedConfig

    config = model_config.parse('name: "alexnet"\nbackend: "python"\nparameters: { key: "stream" value: { string_value: "2" } }')
    with pytest.raises(model_config.ConfigError, match=r"unknown parameter\(s\) stream"):
        ServedConfig.from_model_config(config)


def test_the_live_servers_config_reads_as_its_file(served_repository, triton_server):
    """Triton's /config and the pbtxt it was read from are one ServedConfig."""
    from alexnet_server.clients.protocol import Connection
    from alexnet_server.runtime.served import ServedConfig

    conn = Connection(triton_server.grpc_url, "grpc")
    try:
        live = ServedConfig.from_model_config(conn.config("alexnet"), "cpu-f32", "cpu-f32")
    finally:
        conn.close()
    assert live == ServedConfig.read(served_repository / "alexnet" / "configs" / "cpu-f32.pbtxt")
