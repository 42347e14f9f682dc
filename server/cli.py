"""alexnet-serve: start a real Triton on the AlexNet model repository, wait until it is ready, stop it cleanly.

    alexnet-serve                                   # loopback, ports 8000/8001/8002, config auto
    alexnet-serve --config cpu --http-port 9000 --grpc-port 9001 --metrics-port 9002
    alexnet-serve --config tensorrt --host 0.0.0.0  # in the GPU container (Dockerfile)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from export.repository import MODEL, versions  # stdlib only: no torch at server start
from server import triton
from server.triton import ServeError

DEFAULT_REPOSITORY = triton.PROJECT_ROOT / "model_repository"
# --config NAME -> what tritonserver's --model-config-name gets (None: the default config.pbtxt)
CONFIGS = {"cpu": "cpu", "cpu-int8": "cpu-int8", "onnxruntime": "onnxruntime", "tensorrt": None}
ARTIFACTS = {
    "cpu": ("model.onnx", "model.py"),
    "cpu-int8": ("model.int8.onnx", "model.py"),
    "onnxruntime": ("model.onnx",),
    "tensorrt": ("model.plan",),
}
ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE|error|failed", re.I)
# Printed by every Triton on a machine without a GPU; not why a model failed.
BENIGN = re.compile(r"CudaDriverHelper|NVML|DCGM|cuda_memory_manager|pinned memory pool", re.I)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-serve",
        description="Serve the AlexNet model repository (preprocess -> alexnet, ensemble 'classify') with NVIDIA Triton.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="the Triton model repository")
    parser.add_argument("--config", choices=("auto", *CONFIGS), default="auto",
                        help="alexnet's runtime: auto = tensorrt where a GPU and model.plan exist, else cpu")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default; 0.0.0.0 to expose)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every model to be ready")
    parser.add_argument("--log-file", type=Path, help="Triton's log (default: a temporary file, shown on failure)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream Triton's log to stderr")
    return parser


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def latest_version(repository: Path) -> Path | None:
    """alexnet's newest version folder: the one Triton's default version policy serves."""
    existing = versions(repository)
    return repository / MODEL / str(existing[-1]) if existing else None


def choose_config(choice: str, repository: Path) -> str:
    if choice != "auto":
        return choice
    version = latest_version(repository)
    if version is not None and (version / "model.plan").is_file() and _has_gpu():
        return "tensorrt"
    return "cpu"


def check_repository(repository: Path, config: str) -> None:
    """Refuse to start, naming the command that fixes it, when something the models need is missing."""
    extra = {"tensorrt": " --tensorrt --fp16", "cpu-int8": " --int8"}.get(config, "")
    fix = f"run `alexnet-export CHECKPOINT --repository {repository}{extra}`"
    if not repository.is_dir():
        raise ServeError(f"model repository {repository} does not exist: {fix}")
    for needed in ("preprocess/config.pbtxt", "preprocess/1/model.py", "classify/config.pbtxt", "classify/1"):
        if not (repository / needed).exists():
            raise ServeError(f"{repository / needed} is missing: the repository is incomplete ({fix} into a new folder)")
    version = latest_version(repository)
    if version is None:
        raise ServeError(f"no exported model in {repository / 'alexnet'}: {fix}")
    missing = [name for name in ARTIFACTS[config] if not (version / name).is_file()]
    if not (repository / "alexnet" / "labels.txt").is_file():
        missing.append("../labels.txt")
    if missing:
        raise ServeError(f"{version} lacks {', '.join(missing)} for the {config} config: {fix}")


def _wait_ready(proc: subprocess.Popen, host: str, port: int, timeout: float) -> bool:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    url = f"http://{probe_host}:{port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    return False


def _pump(stream, log_path: Path, echo: bool) -> None:
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for line in iter(stream.readline, ""):
            log.write(line)
            log.flush()
            if echo:
                sys.stderr.write(line)


def _error_lines(log_path: Path, limit: int = 20) -> list[str]:
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.is_file() else []
    hits = [line for line in lines if ERROR_LINE.search(line) and not BENIGN.search(line)]
    return (hits or lines)[-limit:]


def serve(args: argparse.Namespace) -> int:
    repository = args.repository.resolve()
    config = choose_config(args.config, repository)
    check_repository(repository, config)
    server = triton.find()
    workdir = Path(tempfile.mkdtemp(prefix="alexnet-serve-"))
    log_path = args.log_file or workdir / "tritonserver.log"
    proc = None
    stop = threading.Event()
    try:
        server = triton.prepare_wheel_backends(server, workdir)
        cmd = triton.command(server, repository, CONFIGS[config], args.host, args.http_port, args.grpc_port, args.metrics_port)
        print(f"alexnet-serve: starting Triton ({server.source}) on {repository}, alexnet config '{config}'", flush=True)
        # Its own session: Ctrl-C reaches us, and we stop Triton in order.
        proc = subprocess.Popen(cmd, env=triton.environment(server), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        pump = threading.Thread(target=_pump, args=(proc.stdout, log_path, args.verbose), daemon=True)
        pump.start()

        def on_signal(signum, _frame):
            stop.set()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # Triton finishes in-flight requests, unloads, exits 0

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        if not _wait_ready(proc, args.host, args.http_port, args.ready_timeout):
            if stop.is_set():
                proc.wait()
                return 0
            reason = "exited" if proc.poll() is not None else f"was not ready after {args.ready_timeout:.0f} s"
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)
            pump.join(timeout=5)
            print(f"alexnet-serve: Triton {reason}; its errors:", file=sys.stderr)
            for line in _error_lines(log_path):
                print(f"  {line}", file=sys.stderr)
            if args.log_file:
                print(f"  (full log: {log_path})", file=sys.stderr)
            return 1
        print(
            f"alexnet-serve: ready. HTTP http://{args.host}:{args.http_port}  gRPC {args.host}:{args.grpc_port}  "
            f"metrics http://{args.host}:{args.metrics_port}/metrics  (Ctrl-C stops)",
            flush=True,
        )
        code = proc.wait()
        pump.join(timeout=5)
        if stop.is_set():
            print(f"alexnet-serve: stopped (Triton exit code {code})", flush=True)
            return 0 if code == 0 else 1
        print(f"alexnet-serve: Triton exited unexpectedly with code {code}; last errors:", file=sys.stderr)
        for line in _error_lines(log_path):
            print(f"  {line}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            _reap(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _reap(proc: subprocess.Popen) -> None:
    """Nothing left running: Triton and its python-backend stubs share its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return serve(args)
    except ServeError as exc:
        print(f"alexnet-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
