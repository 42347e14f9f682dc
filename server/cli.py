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
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from alexnet_server.contract import gpu, layout, security
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.server import front, health, triton
from alexnet_server.runtime import ServedConfig
from alexnet_server.server.config_choice import CONFIGS, check_repository, choose_config
from alexnet_server.server.exposure import ADMIN_KEY_FILE_ENV, Exposure, exposure
from alexnet_server.server.process import Process
from alexnet_server.server.supervise import Child, Supervisor, say
from alexnet_server.server.triton import ServeError

FRONT_READY_TIMEOUT_S = 30

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
    parser.add_argument("--config", default="auto", metavar="NAME",
                        help=f"alexnet's config: auto = alexnet-tune's tuned config where it was measured on this machine, else "
                             f"tensorrt (a TensorRT backend and a plan built for this GPU), else pytorch (a GPU and model.pt), else cpu "
                             f"(the runtime and precision measured fastest on this CPU); or one by name: {', '.join(sorted(CONFIGS))}, tuned")  # fmt: skip
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


def serve(args: argparse.Namespace) -> int:
    """Choose alexnet's config, write the front's configuration, then start and supervise nginx and Triton."""
    repository = args.repository.resolve()
    server = triton.find()
    guard = exposure(args)
    for warning in guard.warnings:
        say(f"WARNING: {warning}", error=True)
    try:
        workdir = Path(tempfile.mkdtemp(prefix="alexnet-serve-"))
    except OSError as exc:  # a read-only root with no writable /tmp (a pod without its emptyDir)
        raise ServeError(f"no writable temporary folder for nginx's and Triton's working files (set TMPDIR, or mount one at /tmp): {exc}") from None
    stop = threading.Event()
    supervisor: Supervisor | None = None
    try:
        server = triton.prepare_wheel_backends(server, workdir)
        choice = choose_config(args.config, repository, triton.backends(server), gpu.visible_gpus(), gpu.libnvinfer_version())
        if choice.warning:
            say(f"WARNING: {choice.warning}", error=True)
        check_repository(repository, choice.config)
        children, inner = _children(args, server, repository, choice.config, guard, workdir)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        say(f"starting Triton ({server.source}) on {repository}, alexnet config '{choice.config.name}' ({choice.why}); {_front_words(args, guard)}")
        supervisor = Supervisor(children, stop, health_interval=args.health_interval, health_failures=args.health_failures,
                                max_restarts=args.max_restarts, drain_s=args.drain_timeout, show_log_paths=bool(args.log_file))  # fmt: skip
        return supervisor.run(on_ready=lambda: _say_ready(args, guard, inner, children[-1].log))
    finally:
        if supervisor is not None:
            supervisor.reap()
        shutil.rmtree(workdir, ignore_errors=True)


def _children(args: argparse.Namespace, server: triton.Triton, repository: Path, config: ServedConfig, guard: Exposure, workdir: Path) -> tuple[list[Child], front.Ports]:
    """The front (with ``--front nginx``) and Triton, in start order, and Triton's own ports."""
    public = front.Ports(args.http_port, args.grpc_port, args.metrics_port)
    with_front = args.front == "nginx"
    inner = front.Ports(*(args.triton_ports or _free_ports(3, (public.http, public.grpc, public.metrics)))) if with_front else public
    triton_host = "127.0.0.1" if with_front else args.host
    log_path = args.log_file or workdir / "tritonserver.log"
    cmd = triton.command(server, repository, config.model_config_name, (inner.http, inner.grpc, inner.metrics),
                         guard.admin_key, f"alexnet_{secrets.token_hex(8)}_", exit_timeout=max(1, round(args.drain_timeout)),
                         address=triton_host)  # fmt: skip
    triton_url = f"{front.probe_host(triton_host)}:{inner.http}"
    public_url = f"{front.probe_host(args.host)}:{args.http_port}"
    children = [Child("triton", "Triton", start=lambda: Process(cmd, triton.environment(server), log_path, args.verbose),
                      ready=lambda: health.ready_status(triton_url) == 200, problem=lambda: health.check(triton_url), log=log_path,
                      ready_timeout=args.ready_timeout)]  # fmt: skip
    if with_front:
        try:
            nginx = front.find_nginx()
            conf = front.write_config(workdir / "front", args.host, public, inner, guard.token, guard.tls, args.drain_timeout)
        except front.FrontError as exc:
            raise ServeError(str(exc)) from None
        front_log = log_path.with_name(f"{log_path.stem}.front.log")
        tls = guard.tls is not None

        def front_problem() -> str | None:
            # The front answers 503 while Triton is not ready: that is Triton's problem, checked on its own.
            status = health.ready_status(public_url, tls, timeout=10)
            return None if status == 200 or (status == 503 and health.ready_status(triton_url) != 200) else f"its readiness answer was {status or 'nothing'}"

        children.insert(0, Child("front", "the front (nginx)", start=lambda: Process(front.command(nginx, conf), dict(os.environ), front_log, args.verbose),
                                 ready=lambda: health.ready_status(public_url, tls) is not None, problem=front_problem, log=front_log,
                                 ready_timeout=FRONT_READY_TIMEOUT_S, stop_signal=signal.SIGQUIT))  # fmt: skip
    return children, inner


def _front_words(args: argparse.Namespace, guard: Exposure) -> str:
    if args.front != "nginx":
        return "no front"
    auth = "bearer token required" if guard.token else "no token"
    client_certs = ", client certificates" if guard.tls and guard.tls.client_ca else ""
    return f"front: nginx, {'TLS' if guard.tls else 'plain text'}{client_certs}, {auth}"


def _say_ready(args: argparse.Namespace, guard: Exposure, inner: front.Ports, triton_log: Path) -> None:
    """What the model chose (runtime, precision and the measurement behind it), in its own words, and where to reach it."""
    for choice in triton.model_choices(triton_log.read_text(errors="replace") if triton_log.is_file() else ""):
        say(choice)
    scheme = "https" if guard.tls else "http"
    say(f"ready. HTTP {scheme}://{args.host}:{args.http_port}  gRPC {args.host}:{args.grpc_port}  "
        f"metrics {scheme}://{args.host}:{args.metrics_port}/metrics  (Ctrl-C stops)")  # fmt: skip
    where = f"on loopback only (HTTP {inner.http}, gRPC {inner.grpc}, metrics {inner.metrics})" if args.front == "nginx" else "on the ports above"
    say(f"Triton itself listens {where}; its admin APIs ({', '.join(triton.ADMIN_APIS)}) need the admin key")


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return serve(args)
    except ServeError as exc:
        print(f"alexnet-serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
