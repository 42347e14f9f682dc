"""The model repository on a real Triton: correctness over HTTP and gRPC, batching, bad input, lifecycle."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_server import imaging
from alexnet_server.export.source import from_checkpoint
from tests import serving
from tests.conftest import ROOT
from tests.helpers import encode, png_header_only

PROTOCOLS = ["http", "grpc"]


def client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    return module


def client_for(server, protocol: str):
    module = client_module(protocol)
    return module.InferenceServerClient(server.url(protocol), **({"concurrency": 16} if protocol == "http" else {}))


def classify(server, protocol: str, data: bytes, class_count: int = 0, client=None):
    module = client_module(protocol)
    client = client or client_for(server, protocol)
    inp = module.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    out = module.InferRequestedOutput("PROBS", class_count=class_count)
    return client.infer("classify", [inp], outputs=[out]).as_numpy("PROBS")


@pytest.fixture(scope="module")
def reference(served_repository):
    """export's PyTorch 10-crop procedure, in process, on the same decoded image."""
    classifier = from_checkpoint(served_repository.parent / "small.pt").classifier(10)

    def run(data: bytes) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(imaging.load(data))[None]).numpy()[0]

    return run


@pytest.fixture(scope="module")
def images(photo_path) -> dict[str, bytes]:
    photo = Image.open(photo_path).convert("RGB")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    frames = [photo.resize((200, 240)), photo.resize((200, 240)).transpose(Image.FLIP_LEFT_RIGHT)]
    jpeg = photo_path.read_bytes()
    return {
        "jpeg": jpeg,
        "cmyk_jpeg": encode(photo.convert("CMYK"), "JPEG", quality=90),
        "png16": encode(Image.fromarray(grey16), "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "animated_gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "webp": encode(photo, "WEBP"),
        "truncated_jpeg": jpeg[: len(jpeg) // 3],
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_equals_in_process_reference(triton_server, reference, images, protocol):
    probs = classify(triton_server, protocol, images["jpeg"])
    expected = reference(images["jpeg"])
    assert probs.shape == (1, 3)
    assert np.abs(probs[0] - expected).max() <= 1e-4, (probs, expected)
    assert list(np.argsort(-probs[0])[:5]) == list(np.argsort(-expected)[:5])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_class_count_returns_labels(triton_server, reference, images, protocol):
    top = classify(triton_server, protocol, images["jpeg"], class_count=2)
    entries = [e.decode() if isinstance(e, bytes) else e for e in top.reshape(-1)]
    assert len(entries) == 2
    expected = reference(images["jpeg"])
    order = np.argsort(-expected)
    for rank, entry in enumerate(entries):
        score, index, label = entry.split(":")
        assert int(index) == order[rank] and label == ["cat", "dog", "fish"][order[rank]], entry
        assert abs(float(score) - expected[order[rank]]) <= 1e-4


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "png16", "rgba_png", "animated_gif", "webp"])
def test_unusual_images_are_classified(triton_server, reference, images, kind):
    probs = classify(triton_server, "grpc", images[kind])
    assert np.abs(probs[0] - reference(images[kind])).max() <= 1e-4, kind


BAD = {
    "empty": (b"", "empty image"),
    "random": (bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not a recognised image format"),
    "text": (b"GET / HTTP/1.1\r\nthis is plain text\r\n", "not a recognised image format"),
    "bomb": (png_header_only(100000, 100000), "too large"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", [*BAD, "truncated_jpeg"])
def test_bad_images_get_a_clear_error(triton_server, images, protocol, kind):
    data, words = BAD[kind] if kind in BAD else (images[kind], "truncated or corrupt")
    exc_type = client_module(protocol).InferenceServerException if protocol == "grpc" else Exception
    with pytest.raises(exc_type) as info:
        classify(triton_server, protocol, data)
    assert words in str(info.value), str(info.value)
    assert client_for(triton_server, protocol).is_server_ready()


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((1, 3, 256, 256), np.float32), "FP32"),
        (np.zeros((1, 3, 224, 224), np.uint8), "shape"),
    ],
)
def test_wrong_dtype_or_shape_straight_to_alexnet(triton_server, array, words):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton_server.http_url)
    dtype = "FP32" if array.dtype == np.float32 else "UINT8"
    inp = httpclient.InferInput("IMAGE", list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    with pytest.raises(Exception) as info:
        client.infer("alexnet", [inp])
    assert words in str(info.value) and "IMAGE" in str(info.value), str(info.value)
    assert client.is_server_ready()


def test_a_batch_larger_than_one_run_comes_back_whole_and_in_order(triton_server, served_repository):
    """Nine images in one request: the cpu config runs them max_images_per_run (4) at a time;
    every row equals the in-process classifier's, in the order sent."""
    import tritonclient.http as httpclient

    config = (served_repository / "alexnet" / "configs" / "cpu-f32.pbtxt").read_text()
    assert re.search(r'key: "max_images_per_run"\s*value: \{ string_value: "4" \}', config), "the split this test exercises"
    batch = np.random.default_rng(9).integers(0, 256, (9, 3, 256, 256), dtype=np.uint8)
    client = httpclient.InferenceServerClient(triton_server.http_url)
    inp = httpclient.InferInput("IMAGE", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    probs = client.infer("alexnet", [inp]).as_numpy("PROBS")
    classifier = from_checkpoint(served_repository.parent / "small.pt").classifier(10)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(batch)).numpy()
    assert probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_good_and_bad_requests_together(triton_server, reference, images):
    """Concurrent good and bad requests (batched together by Triton): every good one is right."""
    jobs = [("good", images["jpeg"]), ("bad", b"nonsense"), ("good", images["rgba_png"]), ("bad", b""),
            ("good", images["png16"]), ("bad", images["truncated_jpeg"]), ("good", images["jpeg"]), ("bad", BAD["bomb"][0])]  # fmt: skip

    def one(job):
        kind, data = job
        try:
            return kind, data, classify(triton_server, "grpc", data), None
        except Exception as exc:  # noqa: BLE001
            return kind, data, None, str(exc)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(one, jobs))
    for kind, data, probs, error in results:
        if kind == "good":
            assert error is None, error
            assert np.abs(probs[0] - reference(data)).max() <= 1e-4
        else:
            assert probs is None and error, "a bad image must fail"
    assert classify(triton_server, "http", images["jpeg"]).shape == (1, 3)


def test_dynamic_batching_happens(triton_server, images):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton_server.http_url)

    def counts():
        stats = client.get_inference_statistics("alexnet")["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])

    before = counts()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: classify(triton_server, "grpc", images["jpeg"]), range(32)))
    # Triton records statistics just after sending the response: give the last ones a moment.
    deadline = time.monotonic() + 15
    while True:
        inferences, executions = (a - b for a, b in zip(counts(), before))
        if inferences >= 32 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert inferences == 32, inferences
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batching happened"


def test_metrics_endpoint(triton_server, images):
    classify(triton_server, "http", images["jpeg"])
    text = urllib.request.urlopen(f"http://127.0.0.1:{triton_server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'nv_inference_request_success{model="alexnet"' in text
    assert "nv_inference_count" in text and "nv_inference_queue_duration_us" in text


def test_default_host_is_loopback():
    from alexnet_server.server.cli import get_args_parser

    args = get_args_parser().parse_args([])
    assert args.host == "127.0.0.1" and (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)


# --- lifecycle ----------------------------------------------------------------------------------


def _serve(repository: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet_server.server", "--repository", str(repository), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip


def test_missing_model_is_refused_with_the_fix(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo, ignore=lambda folder, names: ["1"] if Path(folder).name == "alexnet" else [])
    proc = _serve(repo, "--config", "cpu-f32")
    assert proc.returncode == 2, proc.stderr
    assert "no exported model" in proc.stderr and "alexnet-export CHECKPOINT --repository" in proc.stderr
    proc = _serve(tmp_path / "nowhere")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_failing_model_prints_tritons_errors(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo)
    (repo / "alexnet" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    http, grpc, metrics = serving.free_ports(3)
    proc = _serve(repo, "--config", "cpu-f32", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics))
    assert proc.returncode == 1, proc.stderr
    assert "its errors" in proc.stderr and "alexnet" in proc.stderr, proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr.split("its errors")[0]


def test_sigterm_exits_zero_with_nothing_left(served_repository, tmp_path):
    server = serving.start(served_repository, tmp_path / "triton.log")
    tree = serving.descendants(server.proc.pid)
    assert len(tree) >= 3, f"expected tritonserver and its python stubs under alexnet-serve, got {tree}"
    assert server.stop() == 0
    time.sleep(0.5)
    alive = [pid for pid in tree if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, f"left running: {alive}"
    assert "stopped (Triton exit code 0)" in (tmp_path / "triton.out").read_text()


# --- the pytorch config (TorchScript; CUDA where visible, else the CPU: the same code) ------------------


def test_pytorch_config_equals_the_onnx_classifier(served_repository, tmp_path, images):
    """Served by the pytorch config on this CPU (fp32): within 1e-4 of the ONNX classifier, same
    top-5; a bad image in the same batch gets its own error while the others succeed."""
    import tritonclient.grpc as grpcclient

    from alexnet_server.runtime import engines

    version = served_repository / "alexnet" / "1"
    onnx = engines.onnxruntime(version / "model.onnx")
    server = serving.start(served_repository, tmp_path / "triton.log", config="pytorch")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        batch = np.stack([imaging.load(images[k]) for k in ("jpeg", "webp", "rgba_png", "png16")])
        inp = grpcclient.InferInput("IMAGE", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        served = client.infer("alexnet", [inp]).as_numpy("PROBS")
        expected = onnx(batch)
        assert np.abs(served - expected).max() <= 1e-4, np.abs(served - expected).max()
        assert (np.argsort(-served, 1)[:, :3] == np.argsort(-expected, 1)[:, :3]).all()

        def one(data):
            request = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
            request.set_data_from_numpy(np.array([[data]], dtype=object))
            try:
                return client.infer("classify", [request]).as_numpy("PROBS")[0], None
            except grpcclient.InferenceServerException as exc:
                return None, exc

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, [images["jpeg"], b"not an image", images["webp"], images["truncated_jpeg"]]))
        assert results[1][1] is not None and "not a recognised image format" in results[1][1].message()
        assert results[3][1] is not None and "truncated" in results[3][1].message()
        for (probs, error), key in ((results[0], "jpeg"), (results[2], "webp")):
            assert error is None and np.abs(probs - onnx(imaging.load(images[key])[None])[0]).max() <= 1e-4
        client.close()
    finally:
        assert server.stop() == 0
    assert "alexnet_0_0: pytorch f32 on CPU" in (tmp_path / "triton.log").read_text()


# --- faults: a dead stub, a prompt stop, oversized requests ---------------------------------------------


def _stub_pid(server, model: str) -> int:
    for pid in serving.descendants(server.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"triton_python_backend_stub") and any(model.encode() in part for part in cmdline):
            return pid
    raise AssertionError(f"no python stub for {model} under {server.proc.pid}")


@pytest.mark.slow
def test_a_killed_stub_is_healed(served_repository, tmp_path, images):
    """kill -9 of preprocess's stub (as the OOM killer would): the health check sees requests fail,
    alexnet-serve restarts Triton, and classify answers again."""
    import os
    import signal as signals

    server = serving.start(served_repository, tmp_path / "triton.log", extra=("--health-interval", "1", "--health-failures", "2"))
    try:
        assert classify(server, "http", images["jpeg"]).shape == (1, 3)
        os.kill(_stub_pid(server, "preprocess"), signals.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "ready again after restart 1" in (tmp_path / "triton.out").read_text():
                break
            time.sleep(0.5)
        out = (tmp_path / "triton.out").read_text()
        assert "unhealthy" in out and "ready again after restart 1" in out, out
        assert classify(server, "grpc", images["jpeg"]).shape == (1, 3)
    finally:
        assert server.stop() == 0


def test_stop_is_prompt_with_idle_keepalive_connections(served_repository, tmp_path, images):
    """Idle keep-alive HTTP connections must not hold a stop for Triton's 30 s: <= 5 s, exit 0."""
    import http.client

    server = serving.start(served_repository, tmp_path / "triton.log")
    idle = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        conn.request("GET", "/v2/health/ready")
        conn.getresponse().read()  # the connection stays open, idle
        idle.append(conn)
    classify(server, "http", images["jpeg"])
    started = time.monotonic()
    code = server.stop(timeout=60)
    took = time.monotonic() - started
    for conn in idle:
        conn.close()
    assert code == 0 and took <= 5.0, f"exit {code} after {took:.1f} s"


def test_oversized_requests_leave_the_server_up(triton_server, images):
    """A 200 MB HTTP body and a 200 MB gRPC message are refused at the front (413 / RESOURCE_EXHAUSTED);
    an image one byte over preprocess's limit, inside the front's, is refused by preprocess: the two
    limits are one.  The server answers the next request."""
    import http.client

    import tritonclient.grpc as grpcclient

    from alexnet_server.contract.security import MAX_IMAGE_BYTES

    def post(image: bytes) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", triton_server.http_port, timeout=120)
        header = json.dumps({"inputs": [{"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(image) + 4}}]}).encode()
        body = header + len(image).to_bytes(4, "little") + image
        conn.request("POST", "/v2/models/classify/infer", body=body, headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        conn.close()
        return response.status, text

    big = b"\xff\xd8\xff" + bytes(200 * 2**20)  # a "JPEG" of 200 MB
    status, text = post(big)
    assert status == 413 and "request body larger than" in text, (status, text[:300])
    status, text = post(b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES - 2))
    assert status == 400 and "image too large" in text and f"{MAX_IMAGE_BYTES:,}" in text, (status, text[:300])
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[big]], dtype=object))
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer("classify", [inp], client_timeout=120)
    assert "too large" in info.value.message() or "RESOURCE_EXHAUSTED" in str(info.value.status()), info.value
    client.close()
    assert classify(triton_server, "grpc", images["jpeg"]).shape == (1, 3)
    assert classify(triton_server, "http", images["jpeg"]).shape == (1, 3)


def test_alexnet_declares_its_input_format(triton_server, served_repository):
    """Clients that prepare images from the model's config (Triton's image_client requires NCHW or
    NHWC) can use alexnet: every config variant declares FORMAT_NCHW, and the server reports it."""
    import tritonclient.http as httpclient

    for path in sorted((served_repository / "alexnet").glob("**/*.pbtxt")):
        assert "format: FORMAT_NCHW" in path.read_text(), f"{path.name} declares no input format"
    client = httpclient.InferenceServerClient(triton_server.http_url)
    config = client.get_model_config("alexnet")
    client.close()
    assert config["input"][0]["format"] == "FORMAT_NCHW", config["input"]
