"""NVIDIA's 2025-2026 Triton bulletins, by class, through the front of a running alexnet-serve.

Every request shape of tests/bulletins.py that reaches Triton 2.51 through the front's routes --
compressed bodies, many outputs or inputs, malformed or oversized headers, lengths that lie,
huge or negative shapes, unknown parameters -- is refused with one line, the same Triton
process stays and answers ready, and its process tree grows by less than 256 MiB over the
request.  Before the front checked them, the JSON-tensor shape aborted Triton and a gzip body
of 0.25 MiB grew it by 1.5 GiB (README, "Security").
"""

from __future__ import annotations

import http.client

import pytest

from tests import attacks, bulletins, serving

TOKEN = "bulletin-token-" + "z" * 24
GROWTH_BOUND_MIB = 256
SHAPES = {shape.name: shape for shape in bulletins.shapes()}


@pytest.fixture(scope="module")
def server(served_repository, module_tmp):
    token = module_tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    started = serving.start(served_repository, module_tmp / "bulletins.log", env={"ALEXNET_TOKEN_FILE": str(token)})
    serving.warm_up(started, TOKEN)  # the models' buffers at full batch: growth measured after is the requests'
    yield started
    started.stop()


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_bulletin_shape_is_refused_before_triton(server, name):
    shape = SHAPES[name]
    target = bulletins.Target("127.0.0.1", server.http_port, server.grpc_port, TOKEN)
    pid = server.triton_pid()
    with bulletins.watch(pid) as cost:
        answer = shape.send(target)
    assert answer.status in shape.expect, f"{name}: {answer.status} {answer.message[:300]}"
    assert answer.message and "\n" not in answer.message, f"{name}: not one line: {answer.message[:300]!r}"
    leaked = [word for word in attacks.LEAKS if word in answer.message]
    assert not leaked, f"{name}: the answer names {leaked}: {answer.message[:300]}"
    assert cost.growth_mib < GROWTH_BOUND_MIB, f"{name}: Triton grew by {cost.growth_mib:.0f} MiB"
    assert server.triton_pid() == pid, f"{name}: Triton was restarted"
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200, f"{name}: not ready after"


def test_what_passes_the_check_is_served_as_before(server, photo_path):
    """The clients' own requests (binary tensors, classification, both protocols) pass the check unchanged."""
    from alexnet_server.clients import Classifier
    from alexnet_server.contract.security import Credentials

    for protocol in ("http", "grpc"):
        with Classifier(server.url(protocol), protocol, credentials=Credentials(token=TOKEN)) as clf:
            top = clf.classify_one(photo_path.read_bytes(), topk=3)
            assert sorted(label for label, _ in top) == ["cat", "dog", "fish"], (protocol, top)
