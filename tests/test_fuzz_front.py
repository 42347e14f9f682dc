"""The front under generated requests: a bounded run of tests/fuzz_front.py against a running alexnet-serve.

Every answer is a documented status with one line and no internal names; afterwards the same
Triton answers ready, and its process tree grew by less than GROWTH_BOUND_MIB over the run.
``make fuzz`` runs the same with many more cases and writes the counts
(ALEXNET_FUZZ_EXAMPLES, ALEXNET_FUZZ_REPORT; docs/RESULTS.md has them).
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest

from tests import bulletins, fuzz_front, serving

TOKEN = "fuzz-token-" + "f" * 24
GROWTH_BOUND_MIB = 256
EXAMPLES = int(os.environ.get("ALEXNET_FUZZ_EXAMPLES", "6"))  # per HTTP operation and mode; x10 for gRPC
REPORT = os.environ.get("ALEXNET_FUZZ_REPORT")


@pytest.fixture(scope="module")
def server(served_repository, module_tmp):
    token = module_tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    started = serving.start(served_repository, module_tmp / "fuzz.log", env={"ALEXNET_TOKEN_FILE": str(token)})
    serving.warm_up(started, TOKEN)  # the models' buffers at full batch: growth measured after is the requests'
    yield started
    started.stop()


def _after(server, pid: int, cost: bulletins.Cost, tally: fuzz_front.Tally, name: str) -> None:
    if REPORT:
        path = Path(REPORT)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = json.loads(path.read_text()) if path.is_file() else {}
        report[name] = {**tally.as_dict(), "triton_rss_growth_mib": round(cost.growth_mib), "same_triton_after": server.triton_pid() == pid}
        path.write_text(json.dumps(report, indent=2) + "\n")
    assert not tally.failures, "\n".join(tally.failures[:10])
    assert server.triton_pid() == pid, "Triton was restarted during the run"
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200, "not ready after the run"
    assert cost.growth_mib < GROWTH_BOUND_MIB, f"Triton grew by {cost.growth_mib:.0f} MiB over the run"


def test_http_requests_from_the_open_inference_spec(server):
    tally = fuzz_front.Tally()
    pid = server.triton_pid()
    with bulletins.watch(pid) as cost:
        fuzz_front.fuzz_http(f"http://127.0.0.1:{server.http_port}", TOKEN, EXAMPLES, tally)
    assert len(tally.cases) >= 13 and sum(tally.cases.values()) >= EXAMPLES * 13, tally.as_dict()  # every operation
    _after(server, pid, cost, tally, "http")


def test_grpc_model_infer_from_the_proto(server):
    tally = fuzz_front.Tally()
    pid = server.triton_pid()
    with bulletins.watch(pid) as cost:
        fuzz_front.fuzz_grpc(bulletins.Target("127.0.0.1", server.http_port, server.grpc_port, TOKEN), EXAMPLES * 10, tally)
    assert sum(tally.cases.values()) == 2 * EXAMPLES * 10, tally.as_dict()
    _after(server, pid, cost, tally, "grpc")
