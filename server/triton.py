"""Finding and preparing a ``tritonserver`` binary, and building its command line.

Three places, in order: ``tritonserver`` on PATH, ``/opt/tritonserver/bin`` (the NGC
container), the binary inside the ``nvidia-pytriton`` wheel.  The wheel's Triton needs two
things a container has built in: its bundled shared libraries on LD_LIBRARY_PATH, and a
python backend folder holding the stub built for the running Python.  The stub embeds
that Python and imports what this environment has (numpy, Pillow, onnxruntime, the
project itself), so it is started with this venv first on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_server.contract import MODEL
from alexnet_server.contract.layout import IMPORT_ROOT

EXIT_TIMEOUT_S = 3  # seconds Triton gives requests in flight on stop (alexnet-serve --drain-timeout)


class ServeError(RuntimeError):
    """alexnet-serve cannot start; the message says what to run to fix it."""


@dataclass
class Triton:
    binary: Path
    source: str  # "PATH", "/opt/tritonserver", "nvidia-pytriton wheel"
    backend_directory: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def _wheel_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).resolve().parent
    return root if (root / "tritonserver" / "bin" / "tritonserver").is_file() else None


def find() -> Triton:
    on_path = shutil.which("tritonserver")
    if on_path:
        return Triton(Path(on_path), "PATH")
    container = Path("/opt/tritonserver/bin/tritonserver")
    if container.is_file():
        return Triton(container, "/opt/tritonserver")
    root = _wheel_root()
    if root is None:
        raise ServeError("no tritonserver found (PATH, /opt/tritonserver/bin, nvidia-pytriton): run `make install` or pip install nvidia-pytriton")
    return Triton(root / "tritonserver" / "bin" / "tritonserver", "nvidia-pytriton wheel")


def prepare_wheel_backends(triton: Triton, workdir: Path) -> Triton:
    """Lay out ``workdir/backends/python`` with the wheel's backend and the stub for this Python."""
    if triton.source != "nvidia-pytriton wheel":
        return triton
    dist = triton.binary.parents[1]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    python_backend = workdir / "backends" / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            (python_backend / item.name).symlink_to(item)
    shutil.copy2(stub, python_backend / "triton_python_backend_stub")
    libs = dist.parents[1] / "nvidia_pytriton.libs"
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p),
    }
    triton.backend_directory = workdir / "backends"
    triton.env = env
    return triton


def backends(triton: Triton) -> set[str]:
    """The backends this Triton can load models with (its backend directory's folders)."""
    folder = triton.backend_directory or triton.binary.parents[1] / "backends"
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def environment(triton: Triton) -> dict[str, str]:
    """The server's environment: this venv first on PATH, the project importable, the wheel's libraries."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = sys.prefix
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(triton.env)
    return env


# Triton's APIs that no client of the product needs.  They are restricted at Triton itself
# (a request must carry the admin key) besides not being routed by the front (server/front.py).
ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_HEADER = "admin-key"


def command(
    triton: Triton,
    repository: Path,
    config_name: str | None,
    ports: tuple[int, int, int],
    admin_key: str,
    shm_prefix: str,
    exit_timeout: int = EXIT_TIMEOUT_S,
    address: str = "127.0.0.1",
) -> list[str]:
    """Triton on ``address`` (loopback; ``ports``: HTTP, gRPC, metrics): clients reach it through the front."""
    http_port, grpc_port, metrics_port = ports
    restricted = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={admin_key}"
    cmd = [
        str(triton.binary),
        f"--model-repository={repository}",
        # Nobody loads or unloads models remotely: the repository is what is served.
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        # The python backend's shared-memory regions are named with this prefix; Triton 2.51 names
        # them in some errors (CVE-2025-23320), so it is random per start rather than guessable.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        # Triton's stop waits this long for requests in flight -- and for idle keep-alive HTTP
        # connections, which would otherwise hold every stop for its default 30 s.
        f"--exit-timeout-secs={exit_timeout}",
    ]
    if config_name:
        cmd.append(f"--model-config-name={config_name}")
    if triton.backend_directory:
        cmd.append(f"--backend-directory={triton.backend_directory}")
    return cmd


def model_choices(log_text: str, model: str = MODEL) -> list[str]:
    """What ``model``'s instances said they run, from Triton's log: the runtime, precision,
    device, threads and file, and why that precision ("alexnet_0_0: openvino int8 on CPU (2
    thread(s)), model.int8.xml; precision int8: fastest measured ...").  One line per instance."""
    found = re.findall(rf'"({re.escape(model)}_\d+_\d+: [^"]* thread\(s\)\)[^"]*)"', log_text)
    return list(dict.fromkeys(found))
