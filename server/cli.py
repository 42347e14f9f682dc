"""alexnet-serve: start a real Triton on the served model repository, keep it healthy, stop it cleanly.

    alexnet-serve                                   # loopback, ports 8000/8001/8002, config auto
    alexnet-serve --config cpu --http-port 9000 --grpc-port 9001 --metrics-port 9002
    alexnet-serve --config tensorrt --host 0.0.0.0  # in the GPU container (Dockerfile)

While serving, one tiny image goes through ``classify`` every ``--health-interval`` seconds
(server/health.py); after ``--health-failures`` failures in a row (a dead python-backend
stub, say), Triton is restarted in place, at most ``--max-restarts`` times, then
alexnet-serve exits 1 so that a supervisor (Kubernetes, systemd) takes over.
"""

from __future__ import annotations

import argparse
import json
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
from dataclasses import dataclass
from pathlib import Path

from contract import MODEL, cpu, gpu, layout, runtimes
from server import health, triton
from server.triton import ServeError


@dataclass(frozen=True)
class Config:
    """One way to run alexnet: Triton's --model-config-name, the files it needs, the backend it needs."""

    model_config_name: str | None  # None: the default config.pbtxt
    artifacts: tuple[str, ...]
    backend: str
    export_flags: str = ""  # what alexnet-export needs to be told to write the artifacts


PY = "model.py"
CONFIGS = {
    "cpu": Config("cpu", (runtimes.FILES["f32"], PY), "python"),
    "cpu-f32": Config("cpu-f32", (runtimes.FILES["f32"], PY), "python"),
    "cpu-bf16": Config("cpu-bf16", (runtimes.FILES["f32"], PY), "python"),
    "cpu-int8": Config("cpu-int8", (runtimes.FILES["int8"], PY), "python", " --int8"),
    "cpu-onnxruntime": Config("cpu-onnxruntime", (runtimes.FILES["f32"], PY), "python"),
    "pytorch": Config("pytorch", (runtimes.FILES["torchscript"], PY), "python", " --formats onnx,torchscript"),
    "onnxruntime": Config("onnxruntime", (runtimes.FILES["f32"],), "onnxruntime"),
    "tensorrt": Config(None, (runtimes.FILES["plan"],), "tensorrt", " --tensorrt --fp16"),
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
    parser.add_argument("--repository", type=Path, default=layout.default_repository(),
                        help=f"the served repository alexnet-export built (${layout.REPOSITORY_ENV} sets the default)")  # fmt: skip
    parser.add_argument("--config", choices=("auto", *CONFIGS), default="auto",
                        help="alexnet's runtime: auto = tensorrt (a TensorRT backend and a plan built for this GPU), "
                             "else pytorch (a GPU and model.pt), else cpu (OpenVINO, the fastest precision for this CPU)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default; 0.0.0.0 to expose)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every model to be ready")
    parser.add_argument("--health-interval", type=float, default=10.0, help="seconds between health checks (a real request); 0 = off")
    parser.add_argument("--health-failures", type=int, default=3, help="failed checks in a row that make Triton restart")
    parser.add_argument("--max-restarts", type=int, default=3, help="restarts before alexnet-serve gives up and exits 1")
    parser.add_argument("--drain-timeout", type=float, default=3.0,
                        help="on stop, seconds the requests in flight get to finish (Triton's --exit-timeout-secs; a CPU batch takes < 2 s)")  # fmt: skip
    parser.add_argument("--log-file", type=Path, help="Triton's log (default: a temporary file, shown on failure)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream Triton's log to stderr")
    return parser


# --- which config ----------------------------------------------------------------------------------


def _plan_record(version: Path) -> dict:
    manifest = version / layout.MANIFEST
    return (json.loads(manifest.read_text(encoding="utf-8")).get("tensorrt") or {}) if manifest.is_file() else {}


def choose_config(choice: str, repository: Path, backends: set[str], gpus: list[dict], tensorrt_version: str | None) -> tuple[str, str]:
    """(config, why) -- by what the Triton found can run (its backends), this host's GPUs, and
    what the latest version holds.  An explicit choice the Triton cannot run is refused."""
    if choice != "auto":
        needed = CONFIGS[choice].backend
        if needed not in backends:
            raise ServeError(f"--config {choice} needs Triton's {needed} backend; this Triton has only {', '.join(sorted(backends)) or 'none'} "
                             f"(the nvidia-pytriton wheel ships only python: use --config cpu or pytorch, or the NGC container)")  # fmt: skip
        if choice == "cpu-bf16" and not cpu.has_native_bf16():
            raise ServeError("--config cpu-bf16 needs a CPU with AMX or AVX512-BF16; this one has neither (use --config cpu)")
        return choice, "asked for"
    version = layout.latest_version(repository)
    if version is not None and "tensorrt" in backends and (version / runtimes.FILES["plan"]).is_file():
        ok, why = gpu.plan_matches(_plan_record(version), gpus, tensorrt_version)
        if ok:
            return "tensorrt", f"a TensorRT backend and a plan built for {gpus[0]['name']}"
        skipped = f"not tensorrt: {why}; "
    else:
        skipped = "not tensorrt: " + ("no TensorRT backend in this Triton; " if "tensorrt" not in backends else "no model.plan; ")
    if gpus and version is not None and (version / runtimes.FILES["torchscript"]).is_file():
        return "pytorch", skipped + f"a GPU ({gpus[0]['name']}) and model.pt"
    reason = "no GPU visible" if not gpus else "no model.pt (alexnet-export --formats onnx,torchscript)"
    return "cpu", skipped + f"not pytorch: {reason}"


def check_repository(repository: Path, config: str) -> None:
    """Refuse to start, naming the command that fixes it, when something the models need is missing."""
    fix = f"run `alexnet-export CHECKPOINT --repository {repository}{CONFIGS[config].export_flags}`"
    if repository.resolve() == layout.TEMPLATE.resolve():
        raise ServeError(f"{repository} is the tracked template, not a served repository: {fix}")
    if not repository.is_dir():
        raise ServeError(f"model repository {repository} does not exist: {fix}")
    for needed in ("preprocess/config.pbtxt", "preprocess/1/model.py", "classify/config.pbtxt", "classify/1"):
        if not (repository / needed).exists():
            raise ServeError(f"{repository / needed} is missing: the repository is incomplete ({fix} into a new folder)")
    version = layout.latest_version(repository)
    if version is None:
        raise ServeError(f"no exported model in {repository / MODEL}: {fix}")
    missing = [name for name in CONFIGS[config].artifacts if not (version / name).is_file()]
    if not (repository / MODEL / layout.LABELS).is_file():
        missing.append(f"../{layout.LABELS}")
    if missing:
        raise ServeError(f"{version} lacks {', '.join(missing)} for the {config} config: {fix}")


# --- one Triton process ------------------------------------------------------------------------------


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
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


def _error_lines(lines: list[str], limit: int = 20) -> list[str]:
    hits = [line for line in lines if ERROR_LINE.search(line) and not BENIGN.search(line)]
    return (hits or lines)[-limit:]


class Process:
    """One tritonserver: started in its own session (Ctrl-C reaches alexnet-serve, which stops it in order)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, echo: bool) -> None:
        self.log_path = log_path
        self.log_start = len(log_path.read_text(errors="replace").splitlines()) if log_path.is_file() else 0
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pump = threading.Thread(target=_pump, args=(self.proc.stdout, log_path, echo), daemon=True)
        self.pump.start()

    def errors(self) -> list[str]:
        self.pump.join(timeout=2 if self.proc.poll() is not None else 0)
        return _error_lines(self.log_lines())

    def stop(self, drain: float) -> int:
        """SIGTERM: Triton refuses new requests, lets those in flight finish (up to its exit
        timeout, ``--drain-timeout``), unloads the models and exits.

        Triton 2.51's stop first waits, up to the same timeout, for its HTTP connections to
        close -- idle keep-alive connections among them -- and the models' unloading then has
        no time left: it exits 1 ("Exit timeout expired") though nothing was lost.  When its
        last count shows no model version with inferences in flight, that is a clean stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=drain + 30)
        except subprocess.TimeoutExpired:
            code = None
        self.reap()
        log = "\n".join(self.log_lines())
        if code not in (0, None) and "Exit timeout expired" in log:
            counts = re.findall(r"Timeout \d+: Found (\d+) model versions that have in-flight inferences", log)
            if counts and counts[-1] == "0":
                return 0
        return 1 if code is None else code

    def log_lines(self) -> list[str]:
        """This process's part of the log (a restarted Triton appends to the same file)."""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if self.log_path.is_file() else []
        return lines[self.log_start :]

    def reap(self) -> None:
        """Nothing left running: Triton and its python-backend stubs share its process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.pump.join(timeout=5)


# --- serving ---------------------------------------------------------------------------------------------


def _watch(process: Process, stop: threading.Event, http_url: str, args: argparse.Namespace) -> str:
    """Block until a stop is asked for ("stop"), Triton exits ("exited") or fails its checks ("unhealthy: why").

    The checks run in their own thread, so a stop never waits for a slow check."""
    verdict: list[str] = []
    done = threading.Event()

    def checks() -> None:
        failures = 0
        while not done.wait(args.health_interval):
            problem = health.check(http_url)
            failures = failures + 1 if problem else 0
            if failures >= args.health_failures and not done.is_set():
                verdict.append(f"unhealthy: {problem} ({failures} checks in a row)")
                return

    if args.health_interval > 0:
        threading.Thread(target=checks, daemon=True, name="health").start()
    try:
        while not stop.wait(0.2):
            if process.proc.poll() is not None:
                return "exited"
            if verdict:
                return verdict[0]
        return "stop"
    finally:
        done.set()


def serve(args: argparse.Namespace) -> int:
    repository = args.repository.resolve()
    server = triton.find()
    workdir = Path(tempfile.mkdtemp(prefix="alexnet-serve-"))
    log_path = args.log_file or workdir / "tritonserver.log"
    stop = threading.Event()
    process: Process | None = None
    try:
        server = triton.prepare_wheel_backends(server, workdir)
        config, why = choose_config(args.config, repository, triton.backends(server), gpu.visible_gpus(), gpu.libnvinfer_version())
        check_repository(repository, config)
        cmd = triton.command(server, repository, CONFIGS[config].model_config_name, args.host, args.http_port, args.grpc_port,
                             args.metrics_port, exit_timeout=max(1, round(args.drain_timeout)))  # fmt: skip
        http_url = f"{_probe_host(args.host)}:{args.http_port}"

        def on_signal(signum, _frame):
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        restarts = 0
        print(f"alexnet-serve: starting Triton ({server.source}) on {repository}, alexnet config '{config}' ({why})", flush=True)
        while True:
            process = Process(cmd, triton.environment(server), log_path, args.verbose)
            if not _wait_ready(process.proc, http_url, args.ready_timeout, stop):
                if stop.is_set():  # asked to stop while Triton was still starting
                    code = process.stop(args.drain_timeout)
                    print(f"alexnet-serve: stopped (Triton exit code {code})", flush=True)
                    return 0 if code == 0 else 1
                reason = "exited" if process.proc.poll() is not None else f"was not ready after {args.ready_timeout:.0f} s"
                process.reap()
                print(f"alexnet-serve: Triton {reason}; its errors:", file=sys.stderr)
                for line in process.errors():
                    print(f"  {line}", file=sys.stderr)
                if args.log_file:
                    print(f"  (full log: {log_path})", file=sys.stderr)
                return 1
            if restarts == 0:
                print(f"alexnet-serve: ready. HTTP http://{args.host}:{args.http_port}  gRPC {args.host}:{args.grpc_port}  "
                      f"metrics http://{args.host}:{args.metrics_port}/metrics  (Ctrl-C stops)", flush=True)  # fmt: skip
            else:
                print(f"alexnet-serve: ready again after restart {restarts} of {args.max_restarts}", flush=True)
            outcome = _watch(process, stop, http_url, args)
            if outcome == "stop":
                code = process.stop(args.drain_timeout)
                print(f"alexnet-serve: stopped (Triton exit code {code})", flush=True)
                return 0 if code == 0 else 1
            if outcome == "exited":
                print(f"alexnet-serve: Triton exited unexpectedly with code {process.proc.returncode}; last errors:", file=sys.stderr)
                for line in process.errors():
                    print(f"  {line}", file=sys.stderr)
            else:
                print(f"alexnet-serve: {outcome}", file=sys.stderr)
            process.reap()
            if restarts >= args.max_restarts:
                print(f"alexnet-serve: giving up after {restarts} restart(s); exiting for a supervisor to restart", file=sys.stderr)
                return 1
            restarts += 1
            print(f"alexnet-serve: restarting Triton ({restarts} of {args.max_restarts})", file=sys.stderr, flush=True)
    finally:
        if process is not None:
            process.reap()
        shutil.rmtree(workdir, ignore_errors=True)


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return serve(args)
    except ServeError as exc:
        print(f"alexnet-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
