"""INT8: quantization, the agreement check, bad calibration input, serving with cpu-int8."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from export import check, quantize
from tests import serving
from tests.conftest import ROOT
from tests.helpers import small_checkpoint, varied_checkpoint
from tests.test_export import snapshot


def run_export(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def calibration_folder(module_tmp, photo_path) -> Path:
    """Real-photo views: crops, scales and mirrors of a photograph, plus the other sample photo."""
    folder = module_tmp / "calibration"
    folder.mkdir()
    photo = Image.open(photo_path).convert("RGB")
    for i in range(24):
        j = i % 8
        view = photo.crop((j * 25, j * 20, photo.width - (7 - j) * 10, photo.height - j * 15)).resize((256 + 8 * i, 300))
        (view.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else view).save(folder / f"view{i:02d}.jpg", quality=92)
    for extra in check.sample_photographs():
        Image.open(extra).convert("RGB").save(folder / f"{extra.stem}.png")
    return folder


@pytest.fixture(scope="module")
def int8_export(module_tmp, calibration_folder):
    folder = module_tmp / "int8"
    ckpt = small_checkpoint(folder / "small.pt", num_classes=3)
    repo = folder / "model_repository"
    proc = run_export(str(ckpt), "--repository", str(repo), "--int8", "--calibration", str(calibration_folder),
                      "--calibration-images", "16", "--int8-check-images", "10")  # fmt: skip
    return ckpt, repo, proc


def test_quantized_model_is_written_and_checked(int8_export):
    _, repo, proc = int8_export
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = repo / "alexnet" / "1"
    assert (version / "model.int8.onnx").is_file() and (version / "model.onnx").is_file()
    manifest = json.loads((version / "export.json").read_text())
    assert manifest["int8"]["check"]["top1_agreement"] >= quantize.MIN_AGREEMENT
    assert manifest["int8"]["calibration_images"] == 16 and "INT8 vs fp32" in proc.stdout
    # The paper arch's crops run on uint8 and both LRN divisions became quantized products.
    assert manifest["int8"]["rewrites"] == {"crops_on_uint8": 1, "factors_on_uint8": 2}
    model = onnx.load(str(version / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Only convolutions and matrix products are quantized: softmax and the crop average stay float.
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "ReduceMean"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), f"{node.op_type} reads quantized data"
    assert (version / "model.int8.onnx").stat().st_size < (version / "model.onnx").stat().st_size / 3, "int8 weights"
    batch = check.photo_batch(check.sample_photographs(), 3)
    probs = check.onnxruntime_runner(version / "model.int8.onnx")(batch)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-3)


@pytest.fixture(scope="module")
def varied_ckpt(module_tmp, calibration_folder) -> Path:
    images, _ = quantize.calibration_images(str(calibration_folder), 16, 1)
    return varied_checkpoint(module_tmp / "varied.pt", images)


def test_broken_calibration_is_rejected(varied_ckpt, tmp_path):
    """All-black calibration images squash the activation ranges; the agreement check catches it."""
    black = tmp_path / "black"
    black.mkdir()
    for i in range(12):
        Image.new("RGB", (300, 300), (0, 0, 0)).save(black / f"{i}.png")
    repo = tmp_path / "repo"
    args = [
        str(varied_ckpt),
        "--repository",
        str(repo),
        "--int8",
        "--calibration",
        str(black),
        "--calibration-images",
        "8",
        "--int8-check-images",
        "4",
    ]
    proc = run_export(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "INT8 model agrees with fp32 on" in proc.stderr and "nothing written" in proc.stderr
    assert not (repo / "alexnet" / "1").exists()
    # With the override it is written, and export.json says so.
    proc = run_export(*args, "--accept-int8-disagreement")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((repo / "alexnet" / "1" / "export.json").read_text())
    assert manifest["int8"]["accepted_below_threshold"] and "accept-int8-disagreement" in manifest["note"]


def test_real_calibration_beats_black(varied_ckpt, tmp_path, calibration_folder):
    """The same model through the library: real photographs calibrate far better than black images."""
    from export import onnx_graph, source

    fp32 = tmp_path / "model.onnx"
    onnx_graph.write(source.from_checkpoint(varied_ckpt).classifier(10), fp32, 10, {})
    calibration, held_back = quantize.calibration_images(str(calibration_folder), 16, 10)
    quantize.quantize(fp32, tmp_path / "good.int8.onnx", calibration)
    quantize.quantize(fp32, tmp_path / "black.int8.onnx", np.zeros((8, 3, 256, 256), dtype=np.uint8))
    good = quantize.agreement(fp32, tmp_path / "good.int8.onnx", held_back)
    black = quantize.agreement(fp32, tmp_path / "black.int8.onnx", held_back)
    assert good["top1_agreement"] > black["top1_agreement"] and good["max_abs_diff"] < black["max_abs_diff"], (good, black)
    with pytest.raises(check.CheckFailed, match="agrees with fp32"):
        quantize.check(black, accept=False)


@pytest.mark.parametrize("kind", ["empty", "unreadable", "missing"])
def test_bad_calibration_input(int8_export, tmp_path, kind):
    ckpt, _, _ = int8_export
    folder = tmp_path / "cal"
    if kind != "missing":
        folder.mkdir()
    if kind == "unreadable":
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    repo = tmp_path / "repo"
    repo.mkdir()
    before = snapshot(repo)
    proc = run_export(str(ckpt), "--repository", str(repo), "--int8", "--calibration", str(folder))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("does not exist" if kind == "missing" else "readable image") in lines[0]
    assert snapshot(repo) == before


@pytest.mark.slow
def test_cpu_int8_config_serves_labels(int8_export, tmp_path, photo_path):
    import tritonclient.grpc as grpcclient

    _, repo, proc = int8_export
    assert proc.returncode == 0
    server = serving.start(repo, tmp_path / "triton.log", config="cpu-int8")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        config = client.get_model_config("alexnet", as_json=True)["config"]
        assert config["parameters"]["onnx_file"]["string_value"] == "model.int8.onnx"
        inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[photo_path.read_bytes()]], dtype=object))
        out = grpcclient.InferRequestedOutput("PROBS", class_count=3)
        top = [e.decode() for e in client.infer("classify", [inp], outputs=[out]).as_numpy("PROBS").reshape(-1)]
        assert {t.split(":")[2] for t in top} == {"cat", "dog", "fish"}
        client.close()
    finally:
        assert server.stop() == 0
    # Two instances share the cores: each ONNX Runtime pool gets half of them.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    pools = re.findall(r"alexnet_\d+_\d+: ONNX Runtime on model.int8.onnx, (\d+) intra-op thread", (tmp_path / "triton.log").read_text())
    assert pools == [str(share)] * 2, pools
