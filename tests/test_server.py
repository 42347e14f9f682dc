"""The model repository on a real Triton: correctness over HTTP and gRPC, batching, bad input, lifecycle."""

from __future__ import annotations

import io
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

import imaging
from export.source import from_checkpoint
from tests import serving
from tests.conftest import ROOT

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


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


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


def _bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


BAD = {
    "empty": (b"", "empty image"),
    "random": (bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not a recognised image format"),
    "text": (b"GET / HTTP/1.1\r\nthis is plain text\r\n", "not a recognised image format"),
    "bomb": (_bomb_png(), "too large"),
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

    config = (served_repository / "alexnet" / "configs" / "cpu.pbtxt").read_text()
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
    from server.cli import get_args_parser

    args = get_args_parser().parse_args([])
    assert args.host == "127.0.0.1" and (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)


# --- lifecycle ----------------------------------------------------------------------------------


def _serve(repository: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "--repository", str(repository), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip


def test_missing_model_is_refused_with_the_fix(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo, ignore=lambda folder, names: ["1"] if Path(folder).name == "alexnet" else [])
    proc = _serve(repo, "--config", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert "no exported model" in proc.stderr and "alexnet-export CHECKPOINT --repository" in proc.stderr
    proc = _serve(tmp_path / "nowhere")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_failing_model_prints_tritons_errors(served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo)
    (repo / "alexnet" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    http, grpc, metrics = serving.free_ports(3)
    proc = _serve(repo, "--config", "cpu", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics))
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
