"""A real tritonserver for the tests: started through alexnet-serve on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Server:
    proc: subprocess.Popen
    repository: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    def triton_ports(self) -> tuple[int, int, int]:
        """Triton's own loopback ports behind the front, as alexnet-serve printed them."""
        text = self.log.with_suffix(".out").read_text()
        found = re.search(r"loopback only \(HTTP (\d+), gRPC (\d+), metrics (\d+)\)", text)
        assert found, f"alexnet-serve did not print Triton's ports:\n{text[-2000:]}"
        return tuple(int(p) for p in found.groups())  # type: ignore[return-value]

    def triton_pid(self) -> int:
        """The tritonserver process under alexnet-serve."""
        pids = [pid for pid in descendants(self.proc.pid) if Path(f"/proc/{pid}/comm").read_text().startswith("tritonserver")]
        assert len(pids) == 1, f"expected one tritonserver under alexnet-serve, found {pids}"
        return pids[0]

    def stop(self, timeout: float = 60) -> int:
        return stop(self.proc, timeout)


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, as a supervisor stops alexnet-serve, then its exit code (killed after ``timeout``: -9)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start(repository: Path, log: Path, config: str = "cpu-f32", timeout: float = 240, extra: tuple[str, ...] = (), env: dict | None = None,
          ca: Path | None = None, wrap: tuple[str, ...] = ()) -> Server:  # fmt: skip
    """alexnet-serve on free loopback ports; ``env`` adds to the environment (a token file, say);
    ``ca``: the front speaks TLS with a certificate this CA signed; ``wrap``: a command that
    runs alexnet-serve's command line given as its arguments (a mount namespace, say)."""
    import tritonclient.http as httpclient

    http_port, grpc_port, metrics_port = free_ports(3)
    cmd = [
        *wrap, sys.executable, "-m", "alexnet_server.server", "--repository", str(repository), "--config", config,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--log-file", str(log),
        # No health-check requests unless a test asks (they would show in the tests' statistics).
        *(extra if "--health-interval" in extra else ("--health-interval", "0", *extra)),
    ]  # fmt: skip
    out = open(log.with_suffix(".out"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, repository, http_port, grpc_port, metrics_port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"alexnet-serve exited with {proc.returncode}:\n{log.with_suffix('.out').read_text()[-3000:]}")
        # A fresh connection each time, closed at once: Triton's graceful shutdown waits
        # for idle keep-alive HTTP connections to go away.
        client = httpclient.InferenceServerClient(server.http_url, **({"ssl": True, "ssl_options": {"ca_certs": str(ca)}} if ca else {}))
        try:
            if client.is_server_ready():
                return server
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        finally:
            client.close()
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"Triton not ready after {timeout} s:\n{log.read_text()[-3000:] if log.exists() else ''}")


def warm_up(server: Server, token: str | None = None) -> None:
    """Requests at the largest batch the configs take (16 images), over both protocols: the
    models and their runtimes hold their working memory afterwards, so what a test measures
    after is what its own requests cost."""
    import io

    from PIL import Image

    from alexnet_server.clients import Classifier
    from alexnet_server.contract.security import Credentials

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 120, 150)).save(buffer, "JPEG")
    for protocol in ("grpc", "http"):
        with Classifier(server.url(protocol), protocol, credentials=Credentials(token=token)) as clf:
            for _ in range(2):
                list(clf.classify_many([buffer.getvalue()] * 32, concurrency=16))


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), e.g. Triton's python-backend stubs."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
