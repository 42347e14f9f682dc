"""The front door: nginx in front of Triton, the only thing clients reach.

Triton 2.51 (the nvidia-pytriton wheel's) cannot be exposed as it is: one chunked HTTP request
crashes it (CVE-2025-23310/23311), its admin APIs (repository, shared memory, logging, trace)
answer anyone, and it asks nobody who they are.  Triton's own deployment guide puts it behind
a gateway; this module writes that gateway's configuration -- nginx from Debian -- and
``alexnet-serve`` starts, watches and stops it beside Triton, which listens on loopback only.

What nginx does here, each a documented directive:
- reads and buffers every request body before Triton sees a byte of it, and passes it on
  with a Content-Length (so chunked framing never reaches Triton's HTTP server), refusing
  bodies over ``contract.security.MAX_REQUEST_BYTES`` with 413 / RESOURCE_EXHAUSTED;
- lets only identity bodies through: a ``Content-Encoding`` other than ``identity`` is refused
  with 415, a ``grpc-encoding`` other than ``identity`` with UNIMPLEMENTED (the gRPC spec's
  answer to an encoding the server does not take), before Triton reads a byte, and neither
  header reaches Triton (so neither does a repeated one, which nginx 1.22 does not look at).
  Triton before 2.65 inflates a compressed body without any limit (NVIDIA bulletins 5790 and
  5848: 1 MiB on the wire became 4 GiB of Triton's memory).  ``Accept-Encoding`` is not passed
  on either: Triton's answers are small (PROBS for at most 64 images) and its compression code
  is one more parser to reach;
- checks every inference request's structure before Triton (front_check.js, run by nginx's
  JavaScript module): the HTTP request's JSON and the gRPC ModelInferRequest's fields against
  the protocol and this server's bounds (``contract.security``: tensors per request, dimensions,
  elements no more than the request has bytes, known parameters, JSON sizes), and a gRPC
  message whose compressed flag is set.  Triton 2.51 allocates a JSON tensor from its shape
  before checking it (a 100-byte request aborts it) and grows by 2 GiB on a gRPC request of
  three million inputs; what passes the check goes to Triton unchanged;
- routes only inference, health, metadata, model config and statistics (HTTP paths and gRPC
  methods listed below); everything else is 404 / UNIMPLEMENTED, admin APIs included;
- with a token, answers any other call without ``Authorization: Bearer <token>`` with 401 /
  UNAUTHENTICATED (health stays open for load balancers and probes);
- with a certificate, speaks TLS (1.2+), and with a client CA, asks for client certificates;
- answers Triton's 500s with one fixed line (Triton words some of them with internal names);
- bounds slow and idle connections (header, body and send timeouts; connections per address)
  and answers in Triton's own error shapes, so clients print one readable line.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from alexnet_server.contract.security import MAX_IMAGE_BYTES, MAX_JSON_HEADER_BYTES, MAX_JSON_REQUEST_BYTES, MAX_REQUEST_BYTES, MAX_TENSOR_DIMS, MAX_TENSORS

CHECK_SCRIPT = Path(__file__).with_name("front_check.js")
# The largest answer Triton gives through the checked route (classification strings or PROBS
# for 64 images of up to a few thousand classes, in JSON): the check holds it in memory.
MAX_RESPONSE_BYTES = 4 * 2**20

# The HTTP/REST paths clients may use (KServe v2; Triton's model config and statistics
# extensions).  /v2/repository, /v2/logging, /v2/trace, /v2/systemsharedmemory,
# /v2/cudasharedmemory and /v2/models/<m>/trace are not among them.
_MODEL = r"/v2/models/[A-Za-z0-9_][A-Za-z0-9_.-]*(/versions/[0-9]+)?"
HTTP_OPEN = (r"^/v2/health/(live|ready)$", rf"^{_MODEL}/ready$")  # health: no token, like gRPC's below
HTTP_ROUTES = (r"^/v2$", rf"^{_MODEL}(/config|/stats)?$")
HTTP_INFER = rf"^{_MODEL}/infer$"  # checked by front_check.js (njs) before Triton, then proxied
# The gRPC methods clients may call (inference.GRPCInferenceService); the standard gRPC health
# check is open like HTTP's health.  Streaming inference is left out: no model here is decoupled.
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_OPEN = ("ServerLive", "ServerReady", "ModelReady")
GRPC_ROUTES = ("ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics")
GRPC_INFER = "ModelInfer"  # checked by front_check.js (njs) before Triton, then proxied

# Bounds on what one client can hold (nginx directives; README, "Security").
CLIENT_HEADER_TIMEOUT_S = 10  # the request line and headers must arrive within this
CLIENT_BODY_TIMEOUT_S = 30  # the longest pause between two reads of a body
SEND_TIMEOUT_S = 30  # the longest pause between two writes of a response
KEEPALIVE_TIMEOUT_S = 65  # an idle connection is closed after this
UPSTREAM_TIMEOUT_S = 120  # the longest wait for Triton's answer (its own queues time out first)
BODY_IN_MEMORY = "1m"  # per connection; a larger body is buffered to a file in the work folder
CONNECTIONS_PER_ADDRESS = 256  # behind a gateway every caller shares its address: keep it generous
WORKER_CONNECTIONS = 2048


class FrontError(RuntimeError):
    """The front cannot start: nginx missing, a bad setting, or nginx refused its configuration."""


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: every connection must present a certificate it signed


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': nobody off this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_host(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def find_nginx() -> Path:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if not found:
        raise FrontError("nginx is not installed: run `make install` (it installs Debian's nginx) or apt-get install nginx")
    return Path(found)


def find_js_module(nginx: Path) -> Path:
    """nginx's JavaScript module (njs), which runs the inference check: in nginx's modules folder."""
    try:
        built = subprocess.run([str(nginx), "-V"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        built = ""
    folders = [part.split("=", 1)[1] for part in built.split() if part.startswith("--modules-path=")]
    for folder in [*folders, "/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/usr/share/nginx/modules"]:
        if (Path(folder) / "ngx_http_js_module.so").is_file():
            return Path(folder) / "ngx_http_js_module.so"
    raise FrontError("nginx's JavaScript module (ngx_http_js_module) is not installed: run `make install` "
                     "(it installs Debian's libnginx-mod-http-js) or apt-get install libnginx-mod-http-js")


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_lines(tls: Tls | None) -> str:
    if tls is None:
        return ""
    lines = [f'ssl_certificate "{tls.cert}";', f'ssl_certificate_key "{tls.key}";', "ssl_protocols TLSv1.2 TLSv1.3;",
             "ssl_session_cache shared:tls:1m;"]  # fmt: skip
    if tls.client_ca:
        lines += [f'ssl_client_certificate "{tls.client_ca}";', "ssl_verify_client on;"]
    return "\n        ".join(lines)


def _auth(token: str | None) -> str:
    """The map nginx checks $http_authorization with (the token is a b64token: no quoting issue)."""
    if token is None:
        return "map $http_authorization $authorized { default 1; }"
    return f'map $http_authorization $authorized {{ default 0; "Bearer {token}" 1; }}'


def _json(status: int, message: str) -> str:
    return f"return {status} '{{\"error\":\"{message}\"}}';"


def _grpc_status(code: int, message: str) -> str:
    # gRPC's "Trailers-Only" answer: the status in the headers of an empty response.
    return (f"default_type application/grpc; add_header grpc-status {code} always; "
            f'add_header grpc-message "{message}" always; return 204;')  # fmt: skip


# What every route shares (rendered into the servers below).
_TOO_LARGE = f"request body larger than {MAX_REQUEST_BYTES} bytes (one image may be up to {MAX_IMAGE_BYTES} bytes)"
_UNAVAILABLE = "the model server is not available right now; retry"
_AUTH = "if ($authorized = 0) { return 401; }"
# Where a route answers, the server's error pages but 400: Triton's 400s name the problem with
# the request (a bad image, a wrong shape) and pass as they are; nginx's own 400s (a request
# line or header it cannot read) get the server's one JSON line.
_ANSWERS = """error_page 401 = @unauthenticated;
            error_page 413 = @too_large;
            error_page 429 = @too_many;
            error_page 500 = @internal;
            error_page 502 503 504 = @unavailable;"""
_PROXY = f"""{_ANSWERS}
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header admin-key "";
            proxy_set_header Content-Encoding "";
            proxy_set_header Accept-Encoding "";
            proxy_intercept_errors on;"""
_GRPC = """grpc_pass grpc://triton_grpc;
            grpc_set_header Authorization "";
            grpc_set_header admin-key "";
            grpc_set_header grpc-encoding "";"""


def render(workdir: Path, host: str, public: Ports, triton: Ports, token: str | None, tls: Tls | None, drain_s: float, js_module: Path) -> str:
    """nginx.conf for one alexnet-serve: public ports on ``host``, Triton's on loopback.

    ``drain_s``: on a graceful stop (SIGQUIT), how long requests in flight get before nginx closes them;
    ``js_module``: nginx's JavaScript module (``find_js_module``)."""
    servers = _http_server(_listen(host, public.http), tls) + _grpc_server(_listen(host, public.grpc), tls) + _metrics_server(_listen(host, public.metrics), tls)
    return f"""# Written by alexnet-serve for this start only (server/front.py); not for editing.
load_module "{js_module}";
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout {max(1, round(drain_s))}s;
worker_rlimit_nofile {2 * WORKER_CONNECTIONS + 64};
pid "{workdir}/nginx.pid";
error_log stderr warn;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
http {{
    access_log off;
    server_tokens off;
    # Inference bodies wait in files for the check (client_body_in_file_only): send them to Triton
    # with the request head in one push.  Without this, the head and the body went out as two
    # segments and Nagle held the second until Triton's delayed ACK: +42 ms a request.
    sendfile on;
    tcp_nopush on;
    default_type application/json;
    client_body_temp_path "{workdir}/body";
    proxy_temp_path "{workdir}/proxy";
    fastcgi_temp_path "{workdir}/fastcgi";
    uwsgi_temp_path "{workdir}/uwsgi";
    scgi_temp_path "{workdir}/scgi";

    client_max_body_size {MAX_REQUEST_BYTES};
    client_body_buffer_size {BODY_IN_MEMORY};
    client_header_timeout {CLIENT_HEADER_TIMEOUT_S}s;
    client_body_timeout {CLIENT_BODY_TIMEOUT_S}s;
    send_timeout {SEND_TIMEOUT_S}s;
    keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;
    # nginx's default (1000 requests, then GOAWAY) makes busy gRPC clients see "Stream removed".
    keepalive_requests 1000000;
    reset_timedout_connection on;
    large_client_header_buffers 4 16k;
    limit_conn_zone $binary_remote_addr zone=per_address:1m;
    limit_conn per_address {CONNECTIONS_PER_ADDRESS};
    limit_conn_status 429;
    proxy_read_timeout {UPSTREAM_TIMEOUT_S}s;
    proxy_send_timeout {UPSTREAM_TIMEOUT_S}s;
    grpc_read_timeout {UPSTREAM_TIMEOUT_S}s;
    grpc_send_timeout {UPSTREAM_TIMEOUT_S}s;

    # The inference check (front_check.js) and its bounds (contract.security).
    js_path "{CHECK_SCRIPT.parent}";
    js_import infer_check from {CHECK_SCRIPT.name};
    js_var $infer_max_tensors {MAX_TENSORS};
    js_var $infer_max_dims {MAX_TENSOR_DIMS};
    js_var $infer_max_json_bytes {MAX_JSON_REQUEST_BYTES};
    js_var $infer_max_header_bytes {MAX_JSON_HEADER_BYTES};
    js_var $grpc_status_out "";  # set by the gRPC check on success: the grpc-status trailer
    subrequest_output_buffer_size {MAX_RESPONSE_BYTES};

    {_auth(token)}
    # The raw path as sent: one that needs decoding or normalising is not a path we serve.
    map $request_uri $plain_path {{ "~^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$" 1; "" 1; default 0; }}  # "": no request line to read
    # Only identity bodies reach Triton (any other coding, any case, any list is refused).
    map $http_content_encoding $encoded_body {{ "" 0; "~*^identity$" 0; default 1; }}
    map $http_grpc_encoding $encoded_message {{ "" 0; "~*^identity$" 0; default 1; }}

    upstream triton_http {{ server 127.0.0.1:{triton.http}; keepalive 32; }}
    upstream triton_grpc {{ server 127.0.0.1:{triton.grpc}; keepalive 32; }}
    upstream triton_metrics {{ server 127.0.0.1:{triton.metrics}; }}

{servers}}}
"""


def _http_server(listen: str, tls: Tls | None) -> str:
    """The HTTP/REST server: the routes, the token, the inference check, every answer as one JSON line."""
    ssl_flag = " ssl" if tls else ""
    http_routes = "\n".join(
        f"""        location ~ "{pattern}" {{
            {_AUTH if pattern in HTTP_ROUTES else ""}
            {_PROXY}
        }}"""
        for pattern in (*HTTP_OPEN, *HTTP_ROUTES)
    )
    # Inference: the body in a file (read only as far as its JSON), checked, then proxied as it came.
    http_routes += f"""
        location ~ "{HTTP_INFER}" {{
            {_ANSWERS}
            {_AUTH}
            client_body_in_file_only clean;
            js_content infer_check.infer;
        }}
        location /_triton/ {{
            internal;
            rewrite "^/_triton(/.*)$" $1 break;
            {_PROXY}
        }}"""
    return f"""    server {{
        listen {listen}{ssl_flag};
        {_tls_lines(tls)}
        if ($plain_path = 0) {{ {_json(404, "not found")} }}
        if ($encoded_body) {{ {_json(415, "compressed request bodies are not accepted: send the body without Content-Encoding")} }}
        error_page 401 = @unauthenticated;
        error_page 413 = @too_large;
        error_page 429 = @too_many;
        error_page 500 = @internal;
        error_page 502 503 504 = @unavailable;
        # A request line nginx cannot read has no URI, which a named location cannot take.
        error_page 400 494 =400 /_malformed;
        error_page 505 =505 /_malformed;
        location = /_malformed {{ internal; {_json(400, "malformed request: its request line or headers cannot be read (headers: at most 16 KiB a line)")} }}
        location @unauthenticated {{ add_header WWW-Authenticate "Bearer" always; {_json(401, "unauthenticated: missing or wrong bearer token")} }}
        location @too_large {{ {_json(413, _TOO_LARGE)} }}
        location @too_many {{ {_json(429, "too many connections from this address; retry")} }}
        location @internal {{ {_json(500, "the model server could not process this request: a malformed request body, or a fault of its own (its log has the details)")} }}
        location @unavailable {{ {_json(503, _UNAVAILABLE)} }}
{http_routes}
        location / {{ {_json(404, "not found")} }}
    }}

"""


def _grpc_server(listen: str, tls: Tls | None) -> str:
    """The gRPC server: the methods, the token, the inference check, every refusal as a gRPC status."""
    ssl_flag = " ssl" if tls else ""
    return f"""    server {{
        listen {listen}{ssl_flag} http2;
        {_tls_lines(tls)}
        error_page 415 = @compressed;
        if ($encoded_message) {{ return 415; }}
        error_page 401 = @unauthenticated;
        error_page 404 = @unimplemented;
        error_page 413 = @too_large;
        error_page 429 = @too_many;
        error_page 502 503 504 = @unavailable;
        location @unauthenticated {{ {_grpc_status(16, "missing or wrong bearer token")} }}
        location @unimplemented {{ {_grpc_status(12, "not a method this server offers")} }}
        location @compressed {{ add_header grpc-accept-encoding identity always; {_grpc_status(12, "compressed messages are not accepted: send them uncompressed (grpc-encoding identity)")} }}
        location @too_large {{ {_grpc_status(8, _TOO_LARGE)} }}
        location @too_many {{ {_grpc_status(14, "too many connections from this address; retry")} }}
        location @unavailable {{ {_grpc_status(14, _UNAVAILABLE)} }}
        location ~ "^/({GRPC_SERVICE.replace(".", "[.]")}/({"|".join(GRPC_OPEN)})|grpc[.]health[.]v1[.]Health/Check)$" {{
            {_GRPC}
        }}
        location ~ "^/{GRPC_SERVICE.replace(".", "[.]")}/({"|".join(GRPC_ROUTES)})$" {{
            {_AUTH}
            {_GRPC}
        }}
        location = /{GRPC_SERVICE}/{GRPC_INFER} {{
            {_AUTH}
            client_body_in_file_only clean;
            js_content infer_check.grpcInfer;
            add_trailer grpc-status $grpc_status_out;
        }}
        location /_triton_grpc/ {{
            internal;
            rewrite "^/_triton_grpc(/.*)$" $1 break;
            {_GRPC}
        }}
        location / {{ return 404; }}
    }}

"""


def _metrics_server(listen: str, tls: Tls | None) -> str:
    """The metrics server: /metrics behind the token."""
    ssl_flag = " ssl" if tls else ""
    return f"""    server {{
        listen {listen}{ssl_flag};
        {_tls_lines(tls)}
        error_page 401 = @unauthenticated;
        error_page 502 503 504 = @unavailable;
        location @unauthenticated {{ add_header WWW-Authenticate "Bearer" always; {_json(401, "unauthenticated: missing or wrong bearer token")} }}
        location @unavailable {{ {_json(503, _UNAVAILABLE)} }}
        location = /metrics {{
            {_AUTH}
            proxy_pass http://triton_metrics;
            proxy_set_header Authorization "";
        }}
        location / {{ {_json(404, "not found")} }}
    }}
"""


def write_config(workdir: Path, host: str, public: Ports, triton: Ports, token: str | None, tls: Tls | None, drain_s: float) -> Path:
    """nginx.conf in ``workdir`` (0600: it holds the token), checked by ``nginx -t``; FrontError with nginx's words.

    Started as root, nginx's workers run as ``nobody``: they get into ``workdir`` (made
    traversable, not listable) and nginx itself hands them its temporary folders."""
    workdir.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        for folder in (workdir.parent, workdir):
            folder.chmod(0o711)
    path = workdir / "nginx.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render(workdir, host, public, triton, token, tls, drain_s, find_js_module(find_nginx())))
    check = subprocess.run([*command(find_nginx(), path), "-t", "-q"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        words = [line.replace(str(path), "nginx.conf") for line in (check.stderr or check.stdout).splitlines() if line.strip()]
        raise FrontError("nginx refused the front's configuration: " + "; ".join(words[-3:]))
    return path


def command(nginx: Path, config: Path) -> list[str]:
    # -e: the early error log nginx opens before reading the configuration (the default is
    # under /var/log, which a non-root user cannot write); -p: relative paths stay here.
    return [str(nginx), "-p", str(config.parent), "-e", "stderr", "-c", str(config)]
