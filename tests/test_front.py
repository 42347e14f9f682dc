"""The server's front door, attacked through its public ports: the real nginx, the real Triton.

Each attack of the security review (issue: "Safe to expose") against alexnet-serve as started
by users: loopback with a token, and exposed (--host 0.0.0.0, TLS, token) inside network
namespaces this test creates.  After every attack the server is ready, it is the same Triton
process, and other clients' requests in flight succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests import attacks, serving
from tests.conftest import ROOT

TOKEN = "test-token-" + "x" * 24


def _run(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip


def _no_leaks(text: str) -> None:
    found = [word for word in attacks.LEAKS if word in text]
    assert not found, f"the answer names {found}: {text[:500]}"


@pytest.fixture(scope="module")
def token_file(module_tmp) -> Path:
    path = module_tmp / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def guarded(served_repository, module_tmp, token_file):
    """alexnet-serve on loopback with a bearer token (ALEXNET_TOKEN_FILE), its defaults otherwise."""
    # Health checks on, as users run it: a flood must not make the supervisor restart Triton.
    server = serving.start(served_repository, module_tmp / "guarded.log", env={"ALEXNET_TOKEN_FILE": str(token_file)},
                           extra=("--health-interval", "3", "--health-failures", "2"))  # fmt: skip
    yield server
    server.stop()


class Bystander:
    """Another client classifying back to back while an attack runs: every request must succeed."""

    def __init__(self, url: str, protocol: str, image: bytes) -> None:
        from alexnet_server.clients import Classifier
        from alexnet_server.contract.security import Credentials

        self.clf = Classifier(url, protocol, credentials=Credentials(token=TOKEN))
        self.image, self.done, self.errors = image, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.clf.classify_one(self.image)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - collected and asserted on
                self.errors.append(repr(exc))

    def __enter__(self) -> "Bystander":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        self.clf.close()


def test_a_body_in_a_million_one_byte_chunks_is_answered_and_triton_stays(guarded, photo_path):
    """CVE-2025-23310/23311's request (a chunked body, one iovec per chunk on Triton 2.51's stack):
    through the front it is one buffered body, answered like any other."""
    pid = guarded.triton_pid()
    image = attacks.noise_png(1_000_000)
    with Bystander(guarded.grpc_url, "grpc", photo_path.read_bytes()) as other:
        status, text = attacks.chunked_infer("127.0.0.1", guarded.http_port, image, chunk=1, token=TOKEN)
    assert status == 200 and '"PROBS"' in text, text[:500]
    assert guarded.triton_pid() == pid, "Triton was restarted"
    assert other.done > 0 and not other.errors, other.errors[:3]
    status, text = attacks.chunked_infer("127.0.0.1", guarded.http_port, b"not an image at all", chunk=1, token=TOKEN)
    assert status == 400 and "not a recognised image format" in text, text[:500]
    _no_leaks(text)
    assert guarded.triton_pid() == pid


def test_admin_apis_are_not_routed(guarded):
    """Repository, logging, trace and shared memory, over HTTP (with path tricks) and gRPC, with a valid token."""
    for method, path in attacks.ADMIN_HTTP:
        status, text = attacks.http_call("127.0.0.1", guarded.http_port, method, path, token=TOKEN)
        assert status == 404 and '{"error":"not found"}' in text, (method, path, status, text[:300])
        _no_leaks(text)
    for method in attacks.ADMIN_GRPC:
        status, message = attacks.grpc_admin(guarded.grpc_url, method, token=TOKEN)
        assert status == "StatusCode.UNIMPLEMENTED", (method, status, message)
    status, text = attacks.http_call("127.0.0.1", guarded.metrics_port, "GET", "/v2/logging", token=TOKEN)
    assert status == 404, "the metrics port serves /metrics only"


def test_triton_itself_refuses_admin_apis_without_the_key(guarded):
    """Behind the front, on Triton's own loopback port: the admin APIs want the per-start admin key,
    and a python-backend region cannot be registered (the region names are random per start too)."""
    http_port, grpc_port, _ = guarded.triton_ports()
    calls = [("POST", "/v2/repository/index"), ("GET", "/v2/logging"), ("GET", "/v2/trace/setting"),
             ("POST", "/v2/systemsharedmemory/region/x/register"), ("GET", "/v2/cudasharedmemory/status")]  # fmt: skip
    for method, path in calls:
        status, text = attacks.http_call("127.0.0.1", http_port, method, path,
                                         body=b'{"key":"triton_python_backend_shm_region_1","offset":0,"byte_size":64}')  # fmt: skip
        assert status != 200 and "restricted" in text, (path, status, text[:300])
    status, message = attacks.grpc_admin(f"127.0.0.1:{grpc_port}", "register_system_shared_memory")
    assert status != "OK" and "restricted" in message, (status, message)
    shm = [name for name in os.listdir("/dev/shm") if "triton_python_backend_shm_region" in name and str(guarded.triton_pid()) in name]
    assert not shm, "the python backend's regions carry a random per-start prefix, not Triton's default name"


def test_callers_need_the_token(guarded, photo_path, token_file):
    """Missing and wrong tokens get 401 / UNAUTHENTICATED and one line; health stays open; metrics needs the token."""
    for token in (None, "wrong-token-" + "y" * 20):
        status, text = attacks.http_call("127.0.0.1", guarded.http_port, "GET", "/v2/models/classify/config", token=token)
        assert status == 401 and "WWW-Authenticate: Bearer" in text and "bearer token" in text, text[:300]
        _no_leaks(text)
        status, _ = attacks.http_call("127.0.0.1", guarded.metrics_port, "GET", "/metrics", token=token)
        assert status == 401
    assert attacks.http_call("127.0.0.1", guarded.http_port, "GET", "/v2/health/ready")[0] == 200
    assert attacks.http_call("127.0.0.1", guarded.metrics_port, "GET", "/metrics", token=TOKEN)[0] == 200
    for protocol in ("grpc", "http"):
        url = guarded.url(protocol)
        bare = _run("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, env={"ALEXNET_TOKEN_FILE": "", "ALEXNET_TOKEN": ""})
        lines = bare.stderr.strip().splitlines()
        assert bare.returncode == 2 and len(lines) == 1 and "missing or wrong bearer token" in lines[0], (protocol, bare.stderr)
        _no_leaks(bare.stderr.replace(str(photo_path), ""))
        good = _run("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, "--token-file", str(token_file))
        assert good.returncode == 0 and ": cat" in good.stdout, good.stdout + good.stderr
        from_env = _run("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, env={"ALEXNET_TOKEN": TOKEN})
        assert from_env.returncode == 0, from_env.stderr
    label = _run("alexnet_server.clients.label", str(photo_path.parent), "--out", str(token_file.parent / "l.csv"), "--url", guarded.grpc_url, "--no-progress",
                 env={"ALEXNET_TOKEN_FILE": "", "ALEXNET_TOKEN": ""})  # fmt: skip
    assert label.returncode == 2 and "bearer token" in label.stderr and "Traceback" not in label.stderr, label.stderr
    health = _run("alexnet_server.server.health", "--url", guarded.http_url, env={"ALEXNET_TOKEN_FILE": str(token_file)})
    assert health.returncode == 0, health.stderr


def test_answers_name_the_problem_and_nothing_internal(guarded):
    """A body over the cap, malformed JSON in one-byte chunks, an unknown path: each answer is one
    JSON line naming the problem, with no paths, region names, versions or tracebacks."""
    from alexnet_server.contract.security import MAX_REQUEST_BYTES

    status, text = attacks.http_call("127.0.0.1", guarded.http_port, "POST", "/v2/models/classify/infer", token=TOKEN, body=bytes(MAX_REQUEST_BYTES + 1))
    assert status == 413 and "request body larger than" in text, text[:300]
    _no_leaks(text)
    status, text = attacks.chunked_infer("127.0.0.1", guarded.http_port, b"", token=TOKEN)  # a header that lies about the body
    assert status in (400, 500) and '{"error":' in text, text[:300]
    _no_leaks(text)
    for path in ("/", "/v1/models", "/v2/models/classify/generate", "/metrics"):
        status, text = attacks.http_call("127.0.0.1", guarded.http_port, "GET", path, token=TOKEN)
        assert status == 404 and "Server: nginx\n" in text, (path, text[:300])
        _no_leaks(text)


def test_slow_clients_are_cut_off(guarded):
    """Half a request line, then silence: the front closes the connection after its header timeout (10 s)."""
    from alexnet_server.server import front

    started = time.monotonic()
    assert attacks.slow_headers("127.0.0.1", guarded.http_port, front.CLIENT_HEADER_TIMEOUT_S + 20), "the connection stayed open"
    assert time.monotonic() - started < front.CLIENT_HEADER_TIMEOUT_S + 20
    assert attacks.http_call("127.0.0.1", guarded.http_port, "GET", "/v2/health/ready")[0] == 200


def test_a_flood_is_refused_not_queued(guarded, photo_path):
    """48 callers sending 16 images each, back to back, for 20 s (many times what 2 cores answer):
    the excess gets UNAVAILABLE naming the full queue (or the queue's time limit), the accepted
    ones are answered, the server's memory stays bounded, and a request after the flood succeeds."""
    import tritonclient.grpc as grpcclient

    from alexnet_server.clients.load import ServerMemory

    memory = ServerMemory(guarded.grpc_url)
    before = memory.rss_mib()
    pid = guarded.triton_pid()
    batch = np.array([[photo_path.read_bytes()]] * 16, dtype=object)
    counts = {"ok": 0, "rejected": 0, "other": []}
    lock = threading.Lock()
    stop_at = time.monotonic() + 20

    def caller() -> None:
        client = grpcclient.InferenceServerClient(guarded.grpc_url)
        inp = grpcclient.InferInput("IMAGE_BYTES", list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        while time.monotonic() < stop_at:
            try:
                client.infer("classify", [inp], headers={"authorization": f"Bearer {TOKEN}"}, client_timeout=120)
                key = "ok"
            except grpcclient.InferenceServerException as exc:
                refused = ("Exceeds maximum queue size", "Request timeout expired")  # Triton's queue policy
                key = "rejected" if any(r in (exc.message() or "") for r in refused) and "UNAVAILABLE" in str(exc.status()) else None
                if key is None:
                    with lock:
                        counts["other"].append(f"{exc.status()}: {exc.message()}")
                    continue
                time.sleep(0.05)  # a client retries with backoff; this one only slows down a little
            with lock:
                counts[key] += 1
        client.close()

    threads = [threading.Thread(target=caller) for _ in range(48)]
    peak = before
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, memory.rss_mib() or 0)
        time.sleep(0.5)
    assert counts["rejected"] > 0, f"nothing was refused: {counts}"
    assert counts["ok"] > 0 and not counts["other"], counts["other"][:3]
    assert peak - before < 3000, f"the server grew by {peak - before:.0f} MiB under the flood"
    assert guarded.triton_pid() == pid and "restarting" not in guarded.log.with_suffix(".out").read_text(), "the flood restarted Triton"
    from alexnet_server.clients import Classifier
    from alexnet_server.contract.security import Credentials

    with Classifier(guarded.grpc_url, credentials=Credentials(token=TOKEN)) as clf:
        assert clf.classify_one(photo_path.read_bytes()), "a request after the flood"


def test_a_killed_front_is_restarted(guarded, photo_path, token_file):
    """nginx killed: alexnet-serve starts it again, Triton untouched, clients (which retry) carry on."""
    pid = guarded.triton_pid()
    masters = [p for p in serving.descendants(guarded.proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "nginx"]
    assert masters, "no nginx under alexnet-serve"
    os.killpg(min(masters), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "the front is back" not in guarded.log.with_suffix(".out").read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "the front is back" in guarded.log.with_suffix(".out").read_text()
    proc = _run("alexnet_server.clients", str(photo_path), "--url", guarded.grpc_url, "--token-file", str(token_file))
    assert proc.returncode == 0, proc.stderr
    assert guarded.triton_pid() == pid


def test_a_host_beyond_loopback_needs_a_token_and_tls(served_repository):
    proc = _run("alexnet_server.server", "--repository", str(served_repository), "--host", "0.0.0.0", env={"ALEXNET_TOKEN_FILE": "", "ALEXNET_TOKEN": ""}, timeout=60)
    assert proc.returncode == 2 and "needs a bearer token" in proc.stderr and "TLS" in proc.stderr and "--insecure" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = _run("alexnet_server.server", "--repository", "/nonexistent", "--host", "0.0.0.0", "--insecure", timeout=60)
    assert "WARNING" in proc.stderr and "WITHOUT" in proc.stderr, proc.stderr
    proc = _run("alexnet_server.server", "--repository", str(served_repository), "--host", "0.0.0.0", "--front", "none", "--insecure", timeout=60)
    assert proc.returncode == 2 and "--front none serves Triton's own ports on a loopback --host" in proc.stderr, proc.stderr


# --- exposed: --host 0.0.0.0, in network namespaces -------------------------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed (make install adds it)"
    probe = subprocess.run(["ip", "netns", "add", "alexnet-probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "alexnet-probe"], capture_output=True)
    return None if probe.returncode == 0 else f"cannot create a network namespace here: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def namespaces():
    """Two network namespaces joined by a veth pair: server 198.18.0.1, client 198.18.0.2 (RFC 2544's
    benchmarking range; nothing outside this machine is reachable from either)."""
    if reason := _netns_unavailable():
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    srv, cli = f"alexnet-srv-{tag}", f"alexnet-cli-{tag}"
    commands = [
        ["ip", "netns", "add", srv], ["ip", "netns", "add", cli],
        ["ip", "link", "add", f"as{tag}", "netns", srv, "type", "veth", "peer", "name", f"ac{tag}", "netns", cli],
        ["ip", "-n", srv, "addr", "add", "198.18.0.1/30", "dev", f"as{tag}"], ["ip", "-n", cli, "addr", "add", "198.18.0.2/30", "dev", f"ac{tag}"],
        ["ip", "-n", srv, "link", "set", f"as{tag}", "up"], ["ip", "-n", cli, "link", "set", f"ac{tag}", "up"],
        ["ip", "-n", srv, "link", "set", "lo", "up"], ["ip", "-n", cli, "link", "set", "lo", "up"],
    ]  # fmt: skip
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, text=True)
        yield srv, cli
    finally:
        for name in (srv, cli):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_exposed_server_in_a_network_namespace(served_repository, namespaces, module_tmp, token_file, photo_path):
    srv, cli = namespaces
    tls = attacks.make_tls(module_tmp / "tls", ips=("198.18.0.1", "127.0.0.1"))
    http_port, grpc_port = 8000, 8001  # a namespace of its own: the defaults are free
    out = module_tmp / "exposed.out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALEXNET_TOKEN_FILE": str(token_file)}
    server = subprocess.Popen(
        ["ip", "netns", "exec", srv, sys.executable, "-m", "alexnet_server.server", "--repository", str(served_repository), "--config", "cpu-f32",
         "--host", "0.0.0.0", "--tls-cert", str(tls["server.pem"]), "--tls-key", str(tls["server.key"]), "--health-interval", "0",
         "--log-file", str(module_tmp / "exposed.log")],
        cwd=ROOT, env=env, stdout=open(out, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip

    def in_client(*args: str, extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "ALEXNET_TOKEN_FILE": "", "ALEXNET_TOKEN": "", **(extra_env or {})})  # fmt: skip

    try:
        deadline = time.monotonic() + 240
        while "alexnet-serve: ready." not in out.read_text() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
        assert "alexnet-serve: ready." in out.read_text(), out.read_text()[-3000:]
        triton = [p for p in serving.descendants(server.pid) if Path(f"/proc/{p}/comm").read_text().startswith("tritonserver")]
        assert len(triton) == 1
        inner = int(re.search(r"loopback only \(HTTP (\d+)", out.read_text()).group(1))
        creds = {"ALEXNET_TOKEN_FILE": str(token_file), "ALEXNET_CA": str(tls["ca.pem"])}
        host = "198.18.0.1"

        # A bystander labelling a folder the whole time, through the same exposed front.
        folder = module_tmp / "photos"
        folder.mkdir(exist_ok=True)
        for i in range(24):
            shutil.copy(photo_path, folder / f"p{i}.jpg")
        bystander = subprocess.Popen(
            ["ip", "netns", "exec", cli, sys.executable, "-m", "alexnet_server.clients.label", str(folder), "--out", str(module_tmp / "by.csv"), "--url",
             f"{host}:{grpc_port}", "--concurrency", "2", "--no-progress"],
            cwd=ROOT, env={**env, **creds}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        report = json.loads(in_client("tests.attacks", host, str(http_port), str(grpc_port), "--token-file", str(token_file), "--ca", str(tls["ca.pem"])).stdout)
        _, by_err = bystander.communicate(timeout=300)
        assert bystander.returncode == 0 and "24 labelled, 0 failed" in by_err, by_err[-2000:]

        assert report["chunked"][0] == 200 and '"PROBS"' in report["chunked"][1], report["chunked"][1][:300]
        assert report["chunked_no_token"][0] == 401
        for call, (status, text) in report["admin_http"].items():
            assert status == 404, (call, status, text[:200])
            _no_leaks(text)
        assert all(status == "StatusCode.UNIMPLEMENTED" for status, _ in report["admin_grpc"].values()), report["admin_grpc"]
        assert report["slow_headers_closed"]

        for protocol, port in (("grpc", grpc_port), ("http", http_port)):
            url = f"{host}:{port}"
            good = in_client("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, extra_env=creds)
            assert good.returncode == 0, (protocol, good.stderr)
            no_token = in_client("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, "--ca", str(tls["ca.pem"]))
            assert no_token.returncode == 2 and "bearer token" in no_token.stderr and len(no_token.stderr.strip().splitlines()) == 1, no_token.stderr
            untrusted = in_client("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, "--token-file", str(token_file), "--ca", str(tls["other-ca.pem"]))
            assert untrusted.returncode == 2 and "TLS" in untrusted.stderr and len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr
            plain = in_client("alexnet_server.clients", str(photo_path), "--url", url, "--protocol", protocol, "--token-file", str(token_file), timeout=120)
            assert plain.returncode == 2 and "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
        health = in_client("alexnet_server.server.health", "--url", f"{host}:{http_port}", extra_env=creds)
        assert health.returncode == 0, health.stderr
        # Triton's own port is on the server's loopback: not reachable from the client's namespace.
        refused = subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c",
                                  f"import socket; s=socket.socket(); s.settimeout(5); print(s.connect_ex(('{host}', {inner})))"],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert refused.stdout.strip() not in ("0", ""), f"Triton's own port {inner} answered from outside"
        now = [p for p in serving.descendants(server.pid) if Path(f"/proc/{p}/comm").read_text().startswith("tritonserver")]
        assert now == triton, "Triton was restarted"
    finally:
        code = serving.stop(server)
    assert code == 0, out.read_text()[-2000:]
