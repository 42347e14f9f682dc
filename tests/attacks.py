"""Hostile requests against a server's public ports, and the TLS material the security tests use.

Each attack returns what the attacker got back (status line or gRPC status, and the body), so
a test can assert both that it was refused and that the answer leaks nothing.  Run as a
module, it attacks a server from another network namespace and prints JSON:

    python -m tests.attacks HOST HTTP_PORT GRPC_PORT --token-file T --ca CA.pem
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np

# Names that must never reach a client: the python backend's regions, paths, tracebacks, versions.
LEAKS = ("triton_python_backend", "shm_region", "alexnet_", "/tmp", "/work", "/usr", "site-packages", "Traceback", "nginx/", ".py")

# Triton's admin endpoints (HTTP); none is routed by the front.
ADMIN_HTTP = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/alexnet/unload"),
    ("POST", "/v2/repository/models/alexnet/load"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("POST", "/v2/trace/setting"),
    ("GET", "/v2/models/classify/trace/setting"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/x/register"),
    ("POST", "/v2/systemsharedmemory/unregister"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("POST", "/v2/cudasharedmemory/region/x/register"),
    # The same, dressed up: dot segments, encoded dots and slashes, doubled slashes, a query.
    ("GET", "/v2/models/classify/../../logging"),
    ("GET", "/v2/models/%2e%2e/logging"),
    ("GET", "/v2/models/classify%2F..%2F..%2Flogging"),
    ("GET", "//v2/logging"),
    ("GET", "/v2/logging?x=1"),
    ("GET", "/v2/models/classify/config?x=/v2/logging"),
]
# The same through gRPC: every admin method of inference.GRPCInferenceService.
ADMIN_GRPC = ["get_model_repository_index", "load_model", "unload_model", "get_log_settings", "update_log_settings",
              "get_trace_settings", "update_trace_settings", "get_system_shared_memory_status", "register_system_shared_memory",
              "unregister_system_shared_memory", "get_cuda_shared_memory_status"]  # fmt: skip


def _connect(host: str, port: int, context: ssl.SSLContext | None, timeout: float = 120) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname=host) if context else sock


def _read_response(sock: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    return status, (head + b"\r\n\r\n" + body).decode(errors="replace")


def noise_png(nbytes: int = 1_000_000, seed: int = 0) -> bytes:
    """A valid PNG of about ``nbytes`` (random pixels do not compress)."""
    from PIL import Image

    side = int((nbytes / 3) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def infer_body(image: bytes) -> tuple[bytes, int]:
    """A KServe v2 binary-extension request for ``classify``: (body, its JSON header's length)."""
    header = json.dumps({"inputs": [{"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(image) + 4}}],
                         "outputs": [{"name": "PROBS", "parameters": {"binary_data": False}}]}).encode()  # fmt: skip
    return header + len(image).to_bytes(4, "little") + image, len(header)


def chunked_infer(host: str, port: int, image: bytes, chunk: int = 1, token: str | None = None, context=None) -> tuple[int, str]:
    """CVE-2025-23310/23311's request shape (Triton's qa/L0_http/http_request_many_chunks.py): a valid
    inference request whose body comes in ``chunk``-byte chunks, about a million of them for a 1 MB image."""
    body, header_length = infer_body(image)
    head = (f"POST /v2/models/classify/infer HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            f"Inference-Header-Content-Length: {header_length}\r\nContent-Type: application/octet-stream\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n").encode()  # fmt: skip
    sock = _connect(host, port, context)
    try:
        sock.sendall(head)
        size = f"{chunk:x}\r\n".encode()
        out = bytearray()
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            out += (size if len(piece) == chunk else f"{len(piece):x}\r\n".encode()) + piece + b"\r\n"
            if len(out) > 1 << 20:
                sock.sendall(out)
                out.clear()
        sock.sendall(bytes(out) + b"0\r\n\r\n")
        return _read_response(sock)
    finally:
        sock.close()


def http_call(host: str, port: int, method: str, path: str, token: str | None = None, context=None, body: bytes = b"{}") -> tuple[int, str]:
    conn = (http.client.HTTPSConnection(host, port, timeout=60, context=context) if context else http.client.HTTPConnection(host, port, timeout=60))
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        # http.client sends the path exactly as given: dot segments and escapes reach the front raw.
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        return response.status, "\n".join(f"{k}: {v}" for k, v in response.getheaders()) + "\n\n" + response.read().decode(errors="replace")
    finally:
        conn.close()


def grpc_admin(url: str, method: str, token: str | None = None, ca: str | None = None) -> tuple[str, str]:
    """(status, message) of one admin call through the gRPC port."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url, **({"ssl": True, "root_certificates": ca} if ca else {}))
    headers = {"authorization": f"Bearer {token}"} if token else None
    args = {
        "load_model": ("alexnet",), "unload_model": ("alexnet",), "update_log_settings": ({"log_verbose_level": 1},),
        "update_trace_settings": ("classify", {"trace_level": ["TIMESTAMPS"]}),
        "register_system_shared_memory": ("x", "/triton_python_backend_shm_region_1", 1024),
        "unregister_system_shared_memory": ("x",),
    }.get(method, ())  # fmt: skip
    try:
        getattr(client, method)(*args, headers=headers)
        return "OK", ""
    except grpcclient.InferenceServerException as exc:
        return str(exc.status()), exc.message() or ""
    finally:
        client.close()


def slow_headers(host: str, port: int, wait_s: float, context=None) -> bool:
    """A client that sends half a request line and stops: True when the front closes it within ``wait_s``."""
    sock = _connect(host, port, context, timeout=wait_s)
    try:
        sock.sendall(b"POST /v2/models/classify/infer HTTP/1.1\r\nHost: x\r\n")
        return sock.recv(4096) is not None  # b"" (closed) or a 408 answer, before the timeout
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True
    finally:
        sock.close()


def make_tls(folder: Path, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, Path]:
    """A CA, a server certificate it signed (for ``names`` and ``ips``), a client certificate it
    signed, and a second CA that signed nothing of ours, with openssl.  Paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {n: folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key", "other-ca.pem", "other-ca.key", "san.cnf")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    for name in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {name}",
            "-keyout", str(f[f"{name}.key"]), "-out", str(f[f"{name}.pem"]))  # fmt: skip
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
    f["san.cnf"].write_text(f"subjectAltName={san}\n")
    for who in ("server", "client"):
        csr = folder / f"{who}.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", str(f[f"{who}.key"]), "-out", str(csr))
        extra = ["-extfile", str(f["san.cnf"])] if who == "server" else []
        run("x509", "-req", "-in", str(csr), "-CA", str(f["ca.pem"]), "-CAkey", str(f["ca.key"]), "-CAcreateserial",
            "-days", "2", "-out", str(f[f"{who}.pem"]), *extra)  # fmt: skip
    return f


def _main(argv: list[str] | None = None) -> int:
    """Run from another network namespace: every attack against HOST, as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tests.attacks")
    parser.add_argument("host")
    parser.add_argument("http_port", type=int)
    parser.add_argument("grpc_port", type=int)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args(argv)
    token = Path(args.token_file).read_text().strip()
    context = ssl.create_default_context(cafile=args.ca)
    h, g = args.host, f"{args.host}:{args.grpc_port}"
    report = {
        "chunked": chunked_infer(h, args.http_port, noise_png(), token=token, context=context),
        "chunked_no_token": chunked_infer(h, args.http_port, noise_png(200_000), token=None, context=context),
        "admin_http": {f"{m} {p}": http_call(h, args.http_port, m, p, token=token, context=context) for m, p in ADMIN_HTTP},
        "admin_grpc": {m: grpc_admin(g, m, token=token, ca=args.ca) for m in ADMIN_GRPC},
        "slow_headers_closed": slow_headers(h, args.http_port, 30, context),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
