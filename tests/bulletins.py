"""The request shapes of NVIDIA's 2025-2026 Triton bulletins that reach Triton 2.51 through the front.

Each ``Shape`` is one request of a bulletin's class, built from scratch (no exploit code of any
report), sent through a server's public ports, and the answer it should get from the front:
a refusal with one line, before Triton allocates for it.  ``watch`` measures what the request
cost Triton: the peak RSS of its process tree (the server and its python-backend stubs) over
the request, and whether the same Triton process answers ready afterwards.

Run against any server (before and after a change, say):

    python -m tests.bulletins HTTP_PORT GRPC_PORT --serve-pid PID [--token-file F] [--json out.json]

prints each shape's answer, time, Triton's RSS growth and whether the same Triton answered after
(README, "Security", has the table); a Triton that died is waited for (alexnet-serve restarts it).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

INFLATED = 256 * 2**20  # what the compressed bodies inflate to: 256 MiB from ~0.25 MiB on the wire


@dataclass
class Answer:
    status: str  # the HTTP status ("415") or the gRPC status code ("3")
    message: str  # the error's text: the JSON "error", or grpc-message
    seconds: float = 0.0


@dataclass(frozen=True)
class Shape:
    name: str
    bulletin: str  # "5790 CVE-2026-24158", the class it stands for
    protocol: str  # "http" | "grpc"
    send: Callable[["Target"], Answer] = field(repr=False)
    expect: tuple[str, ...]  # the statuses the front answers it with


@dataclass(frozen=True)
class Target:
    host: str
    http_port: int
    grpc_port: int
    token: str | None = None


# --- the pieces of a request ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def image() -> bytes:
    """A small real JPEG: the valid part of every request."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


@lru_cache(maxsize=1)
def gzip_json_body() -> bytes:
    """A KServe v2 JSON request whose one string is INFLATED bytes of 'A': ~0.25 MiB gzipped."""
    head, tail = b'{"inputs":[{"name":"IMAGE_BYTES","shape":[1,1],"datatype":"BYTES","data":["', b'"]}]}'
    return gzip.compress(head + b"A" * INFLATED + tail, 9, mtime=0)


@lru_cache(maxsize=1)
def gzip_grpc_message() -> bytes:
    """A ModelInferRequest whose one BYTES element is INFLATED zero bytes, gzipped: ~0.25 MiB."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="classify")
    request.inputs.add(name="IMAGE_BYTES", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(INFLATED.to_bytes(4, "little") + bytes(INFLATED))
    return gzip.compress(request.SerializeToString(), 6, mtime=0)


def binary_request(inputs: list[dict], blob: bytes, outputs: list[dict] | None = None, extra: dict | None = None) -> tuple[bytes, dict]:
    head = {"inputs": inputs, **({"outputs": outputs} if outputs is not None else {}), **(extra or {})}
    text = json.dumps(head).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text))}


def image_input(**changes) -> tuple[dict, bytes]:
    blob = len(image()).to_bytes(4, "little") + image()
    spec = {"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
    spec.update(changes)
    return spec, blob


def http_post(target: Target, model: str, body: bytes, headers: dict | None = None) -> Answer:
    conn = http.client.HTTPConnection(target.host, target.http_port, timeout=120)
    auth = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    started = time.perf_counter()
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/octet-stream", **auth, **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        return Answer(str(response.status), _error_of(text), time.perf_counter() - started)
    finally:
        conn.close()


def http_raw(target: Target, head: bytes, body: bytes = b"") -> Answer:
    """A request written byte for byte (repeated or malformed headers), as http.client will not."""
    auth = f"Authorization: Bearer {target.token}\r\n".encode() if target.token else b""
    started = time.perf_counter()
    with socket.create_connection((target.host, target.http_port), timeout=120) as sock:
        sock.sendall(head.replace(b"\r\n\r\n", b"\r\n" + auth + b"Connection: close\r\n\r\n", 1) + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    text = rest.partition(b"\r\n\r\n")[2].decode(errors="replace")
    return Answer(status_line.split(b" ")[1].decode() if status_line.startswith(b"HTTP/") else "none", _error_of(text), time.perf_counter() - started)


def _error_of(text: str) -> str:
    try:
        return str(json.loads(text).get("error", text[:300]))
    except (ValueError, AttributeError):
        return text[:300]


def grpc_call(target: Target, message: bytes, *, flag: int = 0, encoding: str | None = None, method: str = "ModelInfer") -> Answer:
    """One unary call of inference.GRPCInferenceService written frame by frame (h2): the gRPC
    framing's compressed flag and the grpc-encoding header are ours to set."""
    import h2.config
    import h2.connection
    import h2.events

    payload = bytes([flag]) + len(message).to_bytes(4, "big") + message
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"{target.host}:{target.grpc_port}"),
               (":path", f"/inference.GRPCInferenceService/{method}"), ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
    if encoding:
        headers.append(("grpc-encoding", encoding))
    if target.token:
        headers.append(("authorization", f"Bearer {target.token}"))
    got: dict[str, str] = {}
    started = time.perf_counter()
    with socket.create_connection((target.host, target.grpc_port), timeout=120) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers)
        sent, done = 0, False
        while not done:
            while sent < len(payload) and conn.local_flow_control_window(1) > 0:
                n = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, len(payload) - sent)
                conn.send_data(1, payload[sent : sent + n], end_stream=sent + n == len(payload))
                sent += n
            sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got.update(dict(event.headers))
                done = done or isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset))
            sock.sendall(conn.data_to_send())
    return Answer(got.get("grpc-status", got.get(":status", "none")), got.get("grpc-message", ""), time.perf_counter() - started)


def infer_request(model: str = "classify", build: Callable | None = None) -> bytes:
    """A ModelInferRequest with the image, changed by ``build(request)``, serialized."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="IMAGE_BYTES", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(len(image()).to_bytes(4, "little") + image())
    if build:
        build(request)
    return request.SerializeToString()


def _many(field_name: str, n: int) -> Callable:
    def build(request) -> None:
        for i in range(n):
            getattr(request, field_name).add(name=f"X{i}", **({"datatype": "UINT8", "shape": [1]} if field_name == "inputs" else {}))

    return build


def _shape(dims: list[int]) -> Callable:
    def build(request) -> None:
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend(dims)

    return build


def _parameter(key: str, value: int) -> Callable:
    def build(request) -> None:
        request.parameters[key].int64_param = value

    return build


# --- the shapes -------------------------------------------------------------------------------------------

COMPRESSED = "5790 CVE-2026-24158, 5848 CVE-2026-24264 (compressed payloads)"
MANY = "5816 CVE-2026-24146 (many outputs; inputs alike)"
HEADERS = "5816 CVE-2026-24175, 5853 CVE-2026-47477/47480 (malformed and oversized headers)"
LENGTHS = "5687 CVE-2025-23323/23324, 5816 CVE-2026-24173/24174 (lengths that lie)"
SHAPES = "5687 CVE-2025-23331, 5816 CVE-2026-24173 (huge or negative shapes)"
PARAMETERS = "5853 CVE-2026-47476/47479, 5865 CVE-2026-47629 (unknown and out-of-range parameters)"


def shapes() -> list[Shape]:
    spec, blob = image_input()
    json_tensor = lambda shape, dt="UINT8", name="IMAGE": json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": dt, "data": [1]}]}).encode()  # noqa: E731
    return [
        Shape("HTTP gzip body (inflates to 256 MiB)", COMPRESSED, "http", lambda t: http_post(t, "classify", gzip_json_body(), {"Content-Encoding": "gzip"}), ("415",)),
        Shape("HTTP Content-Encoding GZIP", COMPRESSED, "http", lambda t: http_post(t, "classify", gzip_json_body(), {"Content-Encoding": "GZIP"}), ("415",)),
        Shape("HTTP Content-Encoding 'identity, gzip'", COMPRESSED, "http", lambda t: http_post(t, "classify", gzip_json_body(), {"Content-Encoding": "identity, gzip"}), ("415",)),
        Shape("HTTP Content-Encoding br", COMPRESSED, "http", lambda t: http_post(t, "classify", gzip_json_body(), {"Content-Encoding": "br"}), ("415",)),
        # nginx 1.22 reads the first of repeated headers; none reaches Triton, which then sees gzip bytes as JSON.
        Shape("HTTP Content-Encoding repeated: identity, then gzip", COMPRESSED, "http",
              lambda t: http_raw(t, b"POST /v2/models/classify/infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n"
                                    + f"Content-Length: {len(gzip_json_body())}\r\n\r\n".encode(), gzip_json_body()), ("400",)),
        Shape("gRPC grpc-encoding gzip (inflates to 256 MiB)", COMPRESSED, "grpc",
              lambda t: grpc_call(t, gzip_grpc_message(), flag=1, encoding="gzip"), ("12",)),
        Shape("gRPC compressed flag, identity encoding", COMPRESSED, "grpc", lambda t: grpc_call(t, gzip_grpc_message(), flag=1), ("12",)),
        Shape("HTTP 200,000 outputs", MANY, "http", lambda t: http_post(t, "classify", *binary_request([spec], blob, [{"name": "PROBS"}] * 200_000)), ("400",)),
        Shape("HTTP 50,000 inputs", MANY, "http", lambda t: http_post(t, "classify", *binary_request([spec] * 50_000, blob)), ("400",)),
        Shape("gRPC 300,000 outputs", MANY, "grpc", lambda t: grpc_call(t, infer_request(build=_many("outputs", 300_000))), ("3",)),
        Shape("gRPC 300,000 inputs", MANY, "grpc", lambda t: grpc_call(t, infer_request(build=_many("inputs", 300_000))), ("3",)),
        Shape("HTTP 20 KiB header line", HEADERS, "http", lambda t: http_raw(t, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"), ("400",)),
        Shape("HTTP NUL in a header name", HEADERS, "http", lambda t: http_raw(t, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nBad\x00Name: y\r\n\r\n"), ("400",)),
        Shape("HTTP an unreadable request line", HEADERS, "http", lambda t: http_raw(t, b"GARBAGE\r\n\r\n"), ("400",)),
        Shape("HTTP Inference-Header-Content-Length 10^20", LENGTHS, "http",
              lambda t: http_post(t, "classify", binary_request([spec], blob)[0], {"Inference-Header-Content-Length": "99999999999999999999"}), ("400",)),
        Shape("HTTP Inference-Header-Content-Length -5", LENGTHS, "http",
              lambda t: http_post(t, "classify", binary_request([spec], blob)[0], {"Inference-Header-Content-Length": "-5"}), ("400",)),
        Shape("HTTP binary_data_size 2^62", LENGTHS, "http", lambda t: http_post(t, "classify", *binary_request([{**spec, "parameters": {"binary_data_size": 2**62}}], blob)), ("400",)),
        Shape("HTTP binary_data_size -1", LENGTHS, "http", lambda t: http_post(t, "classify", *binary_request([{**spec, "parameters": {"binary_data_size": -1}}], blob)), ("400",)),
        # The one that aborted Triton 2.51: a JSON tensor is allocated from its shape before its data is counted.
        Shape("HTTP JSON UINT8 tensor, shape 2^20 x 3 x 256 x 256 (alexnet)", SHAPES, "http", lambda t: http_post(t, "alexnet", json_tensor([2**20, 3, 256, 256])), ("400",)),
        Shape("HTTP JSON FP32 tensor, shape 2^20 x 2^20 (classify)", SHAPES, "http", lambda t: http_post(t, "classify", json_tensor([2**20, 2**20], "FP32", "IMAGE_BYTES")), ("400",)),
        Shape("HTTP binary tensor, shape 2^62 x 3 x 256 x 256", SHAPES, "http",
              lambda t: http_post(t, "alexnet", *binary_request([{"name": "IMAGE", "shape": [2**62, 3, 256, 256], "datatype": "UINT8", "parameters": {"binary_data_size": 16}}], b"\1" * 16)), ("400",)),
        Shape("HTTP shape -1 x 1", SHAPES, "http", lambda t: http_post(t, "classify", *binary_request([{**spec, "shape": [-1, 1]}], blob)), ("400",)),
        Shape("gRPC shape 2^62 x 4", SHAPES, "grpc", lambda t: grpc_call(t, infer_request(build=_shape([2**62, 4]))), ("3",)),
        Shape("gRPC shape -1 x 1", SHAPES, "grpc", lambda t: grpc_call(t, infer_request(build=_shape([-1, 1]))), ("3",)),
        Shape("HTTP request parameter sequence_id 2^63", PARAMETERS, "http", lambda t: http_post(t, "classify", *binary_request([spec], blob, extra={"parameters": {"sequence_id": 2**63}})), ("400",)),
        Shape("HTTP input parameter shared_memory_region", PARAMETERS, "http",
              lambda t: http_post(t, "classify", *binary_request([{**spec, "parameters": {"binary_data_size": len(blob), "shared_memory_region": "x", "shared_memory_byte_size": 2**40}}], blob)), ("400",)),
        Shape("gRPC request parameter priority -5", PARAMETERS, "grpc", lambda t: grpc_call(t, infer_request(build=_parameter("priority", -5))), ("3",)),
        Shape("gRPC request parameter sequence_id 2^62", PARAMETERS, "grpc", lambda t: grpc_call(t, infer_request(build=_parameter("sequence_id", 2**62))), ("3",)),
    ]


# --- what a request cost Triton ----------------------------------------------------------------------------


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its descendants (Triton's python-backend stubs), MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


@dataclass
class Cost:
    rss_before_mib: float
    rss_peak_mib: float = 0.0

    @property
    def growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_before_mib


class watch:
    """``with watch(pid) as cost:`` samples the tree's RSS every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cost = Cost(tree_rss_mib(pid))
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.cost.rss_peak_mib = max(self.cost.rss_peak_mib, tree_rss_mib(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> Cost:
        self.cost.rss_peak_mib = self.cost.rss_before_mib
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self.cost

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)  # what the request left behind
        self._stop.set()
        self._thread.join()


def triton_under(serve_pid: int) -> int | None:
    """The tritonserver process under an alexnet-serve, or None (not started, or restarting)."""
    import psutil

    try:
        return next((p.pid for p in psutil.Process(serve_pid).children(recursive=True) if p.name().startswith("tritonserver")), None)
    except psutil.Error:
        return None


def _ready(target: Target, timeout: float = 240) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(target.host, target.http_port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bulletins", description=__doc__.split("\n\n")[0])
    parser.add_argument("http_port", type=int)
    parser.add_argument("grpc_port", type=int)
    parser.add_argument("--serve-pid", type=int, required=True, help="the alexnet-serve process: its Triton's RSS is measured, and a Triton it restarts is waited for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    target = Target(args.host, args.http_port, args.grpc_port, args.token_file.read_text().strip() if args.token_file else None)
    rows = []
    for shape in shapes():
        if not _ready(target) or (pid := triton_under(args.serve_pid)) is None:
            print("the server is not ready: stopping", file=sys.stderr)
            return 1
        with watch(pid) as cost:
            try:
                answer = shape.send(target)
            except OSError as exc:
                answer = Answer("no answer", f"{type(exc).__name__}: {exc}")
        time.sleep(0.5)
        same = triton_under(args.serve_pid) == pid
        row = {"shape": shape.name, "bulletin": shape.bulletin, "status": answer.status, "message": answer.message[:160], "seconds": round(answer.seconds, 2),
               "triton_rss_growth_mib": round(cost.growth_mib), "same_triton_after": same}  # fmt: skip
        rows.append(row)
        print(f"{row['shape']:<58} {row['status']:>9} {row['seconds']:6.2f} s  +{row['triton_rss_growth_mib']:>5} MiB  {'same Triton' if same else 'TRITON DIED'}  {row['message'][:90]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
