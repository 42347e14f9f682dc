"""A real tritonserver for the tests: started through alexnet-serve on free loopback ports."""

from __future__ import annotations

import os
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

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start(repository: Path, log: Path, config: str = "cpu-f32", timeout: float = 240, extra: tuple[str, ...] = ()) -> Server:
    import tritonclient.http as httpclient

    http_port, grpc_port, metrics_port = free_ports(3)
    cmd = [
        sys.executable, "-m", "server", "--repository", str(repository), "--config", config,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--log-file", str(log),
        # No health-check requests unless a test asks (they would show in the tests' statistics).
        *(extra if "--health-interval" in extra else ("--health-interval", "0", *extra)),
    ]  # fmt: skip
    out = open(log.with_suffix(".out"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, repository, http_port, grpc_port, metrics_port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"alexnet-serve exited with {proc.returncode}:\n{log.with_suffix('.out').read_text()[-3000:]}")
        # A fresh connection each time, closed at once: Triton's graceful shutdown waits
        # for idle keep-alive HTTP connections to go away.
        client = httpclient.InferenceServerClient(server.http_url)
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
