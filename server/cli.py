"""alexnet-serve: a real Triton on the served model repository behind an nginx front; kept healthy, stopped cleanly.

    alexnet-serve                                   # loopback, ports 8000/8001/8002, config auto
    alexnet-serve --config cpu --http-port 9000 --grpc-port 9001 --metrics-port 9002
    ALEXNET_TOKEN_FILE=/run/secrets/token alexnet-serve --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem

Clients reach only the front (server/front.py): nginx buffers and caps request bodies,
routes inference, health, metadata, config and statistics, and checks the bearer token and
TLS where set.  Triton listens on loopback, its admin APIs keyed (server/triton.py).

While serving, one tiny image goes through ``classify`` on Triton's own port every
``--health-interval`` seconds (server/health.py) and the front's readiness is asked on the
public port; after ``--health-failures`` failures in a row (a dead python-backend stub, say)
the failing one is restarted in place, at most ``--max-restarts`` times in all, then
alexnet-serve exits 1 so that a supervisor (Kubernetes, systemd) takes over.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from alexnet_server.contract import gpu, layout, security
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.server import front, health, triton
from alexnet_server.server.config_choice import CONFIGS, check_repository, choose_config
from alexnet_server.server.process import Process, wait_ready
from alexnet_server.server.triton import ServeError

ADMIN_KEY_FILE_ENV = "ALEXNET_ADMIN_KEY_FILE"


def _ports(text: str) -> tuple[int, int, int]:
    try:
        ports = tuple(int(p) for p in text.split(","))
    except ValueError:
        ports = ()
    if len(ports) != 3 or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"needs three ports like 18000,18001,18002, got {text!r}")
    return ports  # type: ignore[return-value]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-serve",
        description="Serve the AlexNet model repository (preprocess -> alexnet, ensemble 'classify') with NVIDIA Triton.",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--repository", type=Path, default=layout.default_repository(),
                        help=f"the served repository alexnet-export built (${layout.REPOSITORY_ENV} sets the default)")  # fmt: skip
    parser.add_argument("--config", choices=("auto", *sorted(CONFIGS)), default="auto",
                        help="alexnet's runtime: auto = tensorrt (a TensorRT backend and a plan built for this GPU), "
                             "else pytorch (a GPU and model.pt), else cpu (OpenVINO, the fastest precision for this CPU)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the front listens on (loopback by default; beyond loopback a token and TLS are required, or --insecure)")  # fmt: skip
    parser.add_argument("--http-port", type=int, default=8000, help="the front's HTTP/REST port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="the front's gRPC port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="the front's Prometheus metrics port (/metrics)")
    security_group = parser.add_argument_group("who may call (README, Security)")
    security_group.add_argument("--token-file", type=Path,
                                help=f"file holding the bearer token every call but health must carry (default: ${security.TOKEN_FILE_ENV}, "
                                     f"else ${security.TOKEN_ENV}, else none); never given on the command line")  # fmt: skip
    security_group.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) the front serves TLS with")
    security_group.add_argument("--tls-key", type=Path, help="its PEM private key")
    security_group.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: the front then requires client certificates it signed")
    security_group.add_argument("--insecure", action="store_true",
                                help="allow a --host beyond loopback without a token or TLS (warned about at start)")  # fmt: skip
    security_group.add_argument("--front", choices=("nginx", "none"), default="nginx",
                                help="none: no front, Triton's own ports on a loopback --host (to measure Triton alone, or on a machine "
                                     "without nginx); never for exposing")  # fmt: skip
    security_group.add_argument("--admin-key-file", type=Path,
                                help=f"file holding the key Triton's admin APIs require (default: ${ADMIN_KEY_FILE_ENV}, else random per start)")  # fmt: skip
    security_group.add_argument("--triton-ports", type=_ports, metavar="HTTP,GRPC,METRICS",
                                help="Triton's own loopback ports behind the front (default: free ones, printed at start)")  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every model to be ready")
    parser.add_argument("--health-interval", type=float, default=10.0, help="seconds between health checks (a real request); 0 = off")
    parser.add_argument("--health-failures", type=int, default=3, help="failed checks in a row that make Triton restart")
    parser.add_argument("--max-restarts", type=int, default=3, help="restarts before alexnet-serve gives up and exits 1")
    parser.add_argument("--drain-timeout", type=float, default=float(triton.EXIT_TIMEOUT_S),
                        help="on stop, seconds the requests in flight get to finish (Triton's --exit-timeout-secs; a CPU batch takes < 2 s)")  # fmt: skip
    parser.add_argument("--log-file", type=Path, help="Triton's log, the front's beside it as NAME.front.log (default: temporary files, shown on failure)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream Triton's log to stderr")
    return parser


# --- one Triton process ------------------------------------------------------------------------------


# --- who may call, and how ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """What the front asks of callers, and Triton's admin key (README, "Security")."""

    token: str | None
    tls: front.Tls | None
    admin_key: str
    warnings: tuple[str, ...] = ()


_ADMIN_KEY = re.compile(r"^[A-Za-z0-9_-]{16,}$")  # it goes into Triton's flag syntax (',', ':' and '=' are separators)


def exposure(args: argparse.Namespace) -> Exposure:
    """Credentials from files and the environment; a host beyond loopback without them is refused
    unless ``--insecure`` says so, and then warned about."""
    try:
        token = security.token_from(args.token_file)
        admin_file = args.admin_key_file or os.environ.get(ADMIN_KEY_FILE_ENV)
        admin_key = security.read_secret(admin_file, "admin key") if admin_file else secrets.token_urlsafe(32)
    except security.CredentialError as exc:
        raise ServeError(str(exc)) from None
    if not _ADMIN_KEY.match(admin_key):
        raise ServeError(f"the admin key from {admin_file} is not usable: it needs 16 or more of A-Z a-z 0-9 _ -")
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ServeError("TLS needs both --tls-cert and --tls-key")
        for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
            if path is not None and not path.is_file():
                raise ServeError(f"{path} does not exist")
        tls = front.Tls(args.tls_cert.resolve(), args.tls_key.resolve(), args.tls_client_ca.resolve() if args.tls_client_ca else None)
    elif args.tls_client_ca:
        raise ServeError("--tls-client-ca needs --tls-cert and --tls-key")
    warnings: list[str] = []
    if args.front == "none":
        if not front.is_loopback(args.host) or token or tls:
            raise ServeError("--front none serves Triton's own ports on a loopback --host, without token or TLS; "
                             "a token, TLS or another host need the nginx front")  # fmt: skip
        warnings.append("--front none: clients reach Triton 2.51's own ports on loopback (no body cap, no routing); for measuring, not for exposing")
    elif not front.is_loopback(args.host):
        missing = [what for what, present in (("a bearer token (--token-file or $ALEXNET_TOKEN_FILE)", token), ("TLS (--tls-cert and --tls-key)", tls)) if not present]  # fmt: skip
        if missing and not args.insecure:
            raise ServeError(f"--host {args.host} is reachable from other machines: it needs {' and '.join(missing)}, "
                             f"or --insecure to serve without (anyone who reaches the port may then use the model{'' if tls else ', in clear text'})")  # fmt: skip
        if missing:
            warnings.append(f"--insecure: serving on {args.host} WITHOUT {' and '.join(missing)}: anyone who can reach these ports can use the model")
    return Exposure(token, tls, admin_key, tuple(warnings))


# --- serving ---------------------------------------------------------------------------------------------


def _free_ports(n: int, taken: tuple[int, ...]) -> list[int]:
    """``n`` loopback ports free now and not in ``taken``: the public ports are not bound yet
    when Triton's are chosen (nginx's configuration names both), and the kernel readily hands a
    port just released (a caller's own probe for free public ports) to the next bind."""
    held: list[socket.socket] = []  # every socket stays bound until the end: no port comes twice
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in taken:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


def _watch(triton_proc: Process, front_proc: Process | None, stop: threading.Event, urls: tuple[str, str], tls: bool, args: argparse.Namespace) -> str:
    """Block until a stop is asked for ("stop"), a child exits ("triton exited", "front exited")
    or fails its checks ("triton unhealthy: why", "front unhealthy: why").

    Triton is checked with a real request on its own port; the front with its readiness
    answer on the public port.  The checks run in their own thread, so a stop never waits."""
    verdict: list[str] = []
    done = threading.Event()
    triton_url, public_url = urls

    def checks() -> None:
        failures = {"triton": 0, "front": 0}
        while not done.wait(args.health_interval):
            problems = {"triton": health.check(triton_url)}
            if front_proc is not None:
                status = health.ready_status(public_url, tls, timeout=10)
                problems["front"] = None if status == 200 or (status == 503 and problems["triton"]) else f"its readiness answer was {status or 'nothing'}"
            for who, problem in problems.items():
                failures[who] = failures[who] + 1 if problem else 0
                if failures[who] >= args.health_failures and not done.is_set():
                    verdict.append(f"{who} unhealthy: {problem} ({failures[who]} checks in a row)")
                    return

    if args.health_interval > 0:
        threading.Thread(target=checks, daemon=True, name="health").start()
    try:
        while not stop.wait(0.2):
            if triton_proc.proc.poll() is not None:
                return "triton exited"
            if front_proc is not None and front_proc.proc.poll() is not None:
                return "front exited"
            if verdict:
                return verdict[0]
        return "stop"
    finally:
        done.set()


def _print_errors(what: str, process: Process, log_path: Path, show_path: bool) -> None:
    print(what, file=sys.stderr)
    for line in process.errors():
        print(f"  {line}", file=sys.stderr)
    if show_path:
        print(f"  (full log: {log_path})", file=sys.stderr)


def serve(args: argparse.Namespace) -> int:
    repository = args.repository.resolve()
    server = triton.find()
    guard = exposure(args)
    for warning in guard.warnings:
        print(f"alexnet-serve: WARNING: {warning}", file=sys.stderr, flush=True)
    try:
        workdir = Path(tempfile.mkdtemp(prefix="alexnet-serve-"))
    except OSError as exc:  # a read-only root with no writable /tmp (a pod without its emptyDir)
        raise ServeError(f"no writable temporary folder for nginx's and Triton's working files (set TMPDIR, or mount one at /tmp): {exc}") from None
    log_path = args.log_file or workdir / "tritonserver.log"
    front_log = log_path.with_name(f"{log_path.stem}.front.log")
    stop = threading.Event()
    triton_proc: Process | None = None
    front_proc: Process | None = None
    try:
        server = triton.prepare_wheel_backends(server, workdir)
        config, why = choose_config(args.config, repository, triton.backends(server), gpu.visible_gpus(), gpu.libnvinfer_version())
        check_repository(repository, config)
        public = front.Ports(args.http_port, args.grpc_port, args.metrics_port)
        with_front = args.front == "nginx"
        inner = front.Ports(*(args.triton_ports or _free_ports(3, (public.http, public.grpc, public.metrics)))) if with_front else public
        triton_host = "127.0.0.1" if with_front else args.host
        if with_front:
            try:
                nginx = front.find_nginx()
                conf = front.write_config(workdir / "front", args.host, public, inner, guard.token, guard.tls, args.drain_timeout)
            except front.FrontError as exc:
                raise ServeError(str(exc)) from None
        cmd = triton.command(server, repository, CONFIGS[config].model_config_name, (inner.http, inner.grpc, inner.metrics),
                             guard.admin_key, f"alexnet_{secrets.token_hex(8)}_", exit_timeout=max(1, round(args.drain_timeout)),
                             address=triton_host)  # fmt: skip
        triton_url = f"{front.probe_host(triton_host)}:{inner.http}"
        public_url = f"{front.probe_host(args.host)}:{args.http_port}"

        def on_signal(signum, _frame):
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        def start_front() -> Process:
            proc = Process(front.command(nginx, conf), dict(os.environ), front_log, args.verbose)
            if not wait_ready(proc.proc, lambda: health.ready_status(public_url, guard.tls is not None) is not None, 30, stop):
                proc.reap()
                _print_errors("alexnet-serve: the front (nginx) did not start; its errors:", proc, front_log, bool(args.log_file))
                raise _Failed()
            return proc

        auth = "bearer token required" if guard.token else "no token"
        front_words = (f"front: nginx, {'TLS' if guard.tls else 'plain text'}{', client certificates' if guard.tls and guard.tls.client_ca else ''}, {auth}"
                       if with_front else "no front")  # fmt: skip
        print(f"alexnet-serve: starting Triton ({server.source}) on {repository}, alexnet config '{config}' ({why}); {front_words}", flush=True)
        front_proc = start_front() if with_front else None
        restarts = 0
        while True:
            triton_proc = Process(cmd, triton.environment(server), log_path, args.verbose)
            if not wait_ready(triton_proc.proc, lambda: health.ready_status(triton_url) == 200, args.ready_timeout, stop):
                if stop.is_set():  # asked to stop while Triton was still starting
                    return _stop(front_proc, triton_proc, args.drain_timeout)
                reason = "exited" if triton_proc.proc.poll() is not None else f"was not ready after {args.ready_timeout:.0f} s"
                triton_proc.reap()
                _print_errors(f"alexnet-serve: Triton {reason}; its errors:", triton_proc, log_path, bool(args.log_file))
                return 1
            if restarts == 0:
                # What the model chose (runtime, precision and the measurement behind it), in its own words.
                for choice in triton.model_choices(log_path.read_text(errors="replace") if log_path.is_file() else ""):
                    print(f"alexnet-serve: {choice}", flush=True)
                scheme = "https" if guard.tls else "http"
                print(f"alexnet-serve: ready. HTTP {scheme}://{args.host}:{args.http_port}  gRPC {args.host}:{args.grpc_port}  "
                      f"metrics {scheme}://{args.host}:{args.metrics_port}/metrics  (Ctrl-C stops)", flush=True)  # fmt: skip
                where = f"on loopback only (HTTP {inner.http}, gRPC {inner.grpc}, metrics {inner.metrics})" if with_front else "on the ports above"
                print(f"alexnet-serve: Triton itself listens {where}; its admin APIs ({', '.join(triton.ADMIN_APIS)}) need the admin key", flush=True)
            else:
                print(f"alexnet-serve: ready again after restart {restarts} of {args.max_restarts}", flush=True)
            while True:
                outcome = _watch(triton_proc, front_proc, stop, (triton_url, public_url), guard.tls is not None, args)
                if outcome == "stop":
                    return _stop(front_proc, triton_proc, args.drain_timeout)
                who = outcome.split()[0]
                process, path = (front_proc, front_log) if who == "front" else (triton_proc, log_path)
                if outcome.endswith("exited"):
                    _print_errors(f"alexnet-serve: {'the front (nginx)' if who == 'front' else 'Triton'} exited unexpectedly with code "
                                  f"{process.proc.returncode}; last errors:", process, path, False)  # fmt: skip
                else:
                    print(f"alexnet-serve: {outcome}", file=sys.stderr)
                process.reap()
                if restarts >= args.max_restarts:
                    print(f"alexnet-serve: giving up after {restarts} restart(s); exiting for a supervisor to restart", file=sys.stderr)
                    return 1
                restarts += 1
                print(f"alexnet-serve: restarting {'the front' if who == 'front' else 'Triton'} ({restarts} of {args.max_restarts})", file=sys.stderr, flush=True)
                if who == "triton":
                    break
                front_proc = start_front()
                print(f"alexnet-serve: the front is back after restart {restarts} of {args.max_restarts}", flush=True)
    except _Failed:
        return 1
    finally:
        for process in (front_proc, triton_proc):
            if process is not None:
                process.reap()
        shutil.rmtree(workdir, ignore_errors=True)


class _Failed(Exception):
    """A child could not start; what went wrong is already printed."""


def _stop(front_proc: Process | None, triton_proc: Process, drain: float) -> int:
    """The front first (no new requests; those in flight are answered), then Triton."""
    front_code = front_proc.stop(drain, signal.SIGQUIT) if front_proc is not None else 0
    code = triton_proc.stop(drain)
    if front_code != 0:
        print(f"alexnet-serve: the front (nginx) exited with code {front_code} on stop", file=sys.stderr)
    print(f"alexnet-serve: stopped (Triton exit code {code})", flush=True)
    return 0 if code == 0 and front_code == 0 else 1


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return serve(args)
    except ServeError as exc:
        print(f"alexnet-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
