"""Export: ONNX parity with PyTorch, geometry, the repository contract, torchvision weights, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from alexnet_server import imaging
from alexnet_server.contract import layout
from alexnet_server.runtime import engines
from alexnet_server.export import check, cli as export_cli, tensorrt_engine
from tests.conftest import make_image_folder
from tests.helpers import run_export, run_module, small_checkpoint, snapshot
from alexnet_server.train import checkpoint, data, engine
from alexnet_server.train.model import CropAverage, normalisation

# Tests gate on the sample photographs alone, whether or not Fashion-MNIST is installed here.
NO_DATA = ("--calibration", "/nonexistent", "--gate-images", "0")


def configs(repo: Path) -> list[Path]:
    """Every served config that carries the class count: alexnet's variants and the ensemble's."""
    return [repo / "alexnet" / "config.pbtxt", *sorted((repo / "alexnet" / "configs").glob("*.pbtxt")), repo / "classify" / "config.pbtxt"]


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt", num_classes=3)


@pytest.fixture(scope="session")
def exported(ckpt_path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    proc = run_export(str(ckpt_path), "--repository", str(repo), *NO_DATA)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return repo, proc


def ort(path: Path):
    return engines.onnxruntime(path)


def test_export_writes_the_contract(exported):
    repo, proc = exported
    version = repo / "alexnet" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["export.json", "model.onnx", "model.py"]
    assert (repo / "alexnet" / "labels.txt").read_text().splitlines() == ["cat", "dog", "fish"]
    for config in configs(repo):
        assert "dims: [ 3 ]" in config.read_text(), f"{config} must carry the class count"
    template = {p.relative_to(layout.TEMPLATE) for p in layout.TEMPLATE.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    served = {p.relative_to(repo) for p in repo.rglob("*") if p.is_file()}
    assert template - {Path("alexnet/model.py")} <= served, "the served repository holds the template's files"
    assert (version / "model.py").read_bytes() == (layout.TEMPLATE / "alexnet" / "model.py").read_bytes(), "a copy, not generated code"
    model = onnx.load(str(version / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("IMAGE", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("PROBS", onnx.TensorProto.FLOAT)
    manifest = json.loads((version / "export.json").read_text())
    assert manifest["crops"] == 10 and manifest["classes"] == 3 and manifest["onnx"]["check"]["max_abs_diff"] <= 1e-5
    assert "ONNX Runtime vs PyTorch: 24 images" in proc.stdout and "top-5 mismatches 0" in proc.stdout
    assert not [p for p in (repo / "alexnet").iterdir() if p.name.startswith(".")], "no staging leftovers"
    assert oct(version.stat().st_mode & 0o777) == oct(0o777 & ~_umask()), "Triton (maybe another user) must read the version"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("n", [1, 3, 8])
def test_parity_with_pytorch_on_photographs(exported, ckpt_path, n, photo_path):
    repo, _ = exported
    classifier = _reference(ckpt_path)
    batch = check.photo_batch([photo_path, *imaging.sample_photographs()], n)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(batch)).numpy()
    got = ort(repo / "alexnet" / "1" / "model.onnx")(batch)
    assert got.shape == (n, 3)
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
    assert (np.argsort(-got, 1)[:, :3] == np.argsort(-expected, 1)[:, :3]).all()


def _reference(ckpt: Path) -> CropAverage:
    state = checkpoint.load(ckpt)
    offset, scale = normalisation(state["arch"], state["mean_image"], state["recipe"]["input_scale"])
    return CropAverage(checkpoint.build_model(state), offset, scale, 10).eval()


def test_batch_axis_is_dynamic(exported):
    repo, _ = exported
    run = ort(repo / "alexnet" / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    for n in (1, 5, 13):
        out = run(rng.integers(0, 256, (n, 3, 256, 256), dtype=np.uint8))
        assert out.shape == (n, 3)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5, err_msg="PROBS rows are probability distributions")


def test_graph_crops_equal_torchvision_tencrop(exported, ckpt_path, photo_path):
    """The ten crops inside the graph are torchvision's TenCrop, averaged after softmax."""
    from torchvision.transforms import TenCrop

    repo, _ = exported
    state = checkpoint.load(ckpt_path)
    net = checkpoint.build_model(state)
    image = torch.from_numpy(imaging.load(photo_path))
    normalised = (image.float() - state["mean_image"]) * state["recipe"]["input_scale"]
    crops = torch.stack(TenCrop(224)(normalised))
    with torch.no_grad():
        expected = torch.softmax(net(crops), dim=1).mean(0).numpy()
    got = ort(repo / "alexnet" / "1" / "model.onnx")(image.numpy()[None])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_graph_mirrors_the_image_once(exported):
    """The five mirrored crops are cut from one mirrored image: a single reversed Slice
    (ONNX Runtime copies reversed slices element by element, so five of them cost 4% of
    an INT8 run)."""
    from onnx import numpy_helper

    repo, _ = exported
    model = onnx.load(str(repo / "alexnet" / "1" / "model.onnx"))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    reversed_slices = sum(len(n.input) > 4 and bool((values[n.input[4]] < 0).any()) for n in slices)
    assert len(slices) >= 10, "ten crops are ten slices (or more: one per axis)"
    assert reversed_slices == 1, f"reversed slices: {reversed_slices}"


def test_round_trip_equals_train_evaluation(exported, ckpt_path, tmp_path):
    """checkpoint -> ONNX -> ONNX Runtime gives the errors train/'s own 10-crop evaluation gives."""
    repo, _ = exported
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=4, seed=5)
    val = data.open_split(str(root), "val")
    loader = data.make_loader(val, 4, list(range(len(val))), 0, False)
    from alexnet_server.train import distributed
    import contextlib

    ours = engine.evaluate(_reference(ckpt_path), loader, distributed.Context(), contextlib.nullcontext, desc="eval")
    run = ort(repo / "alexnet" / "1" / "model.onnx")
    images = np.stack([val[i][0] for i in range(len(val))])
    labels = np.array([val[i][1] for i in range(len(val))])
    probs = run(images)
    top1 = float((probs.argmax(1) != labels).mean())
    assert top1 == pytest.approx(ours["top1_10crop_error"]), (top1, ours)
    assert len(val) == ours["images"] == 12


def test_centre_crop_variant(ckpt_path, tmp_path):
    repo = tmp_path / "repo"
    proc = run_export(str(ckpt_path), "--repository", str(repo), "--crops", "1", *NO_DATA)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = checkpoint.load(ckpt_path)
    offset, scale = normalisation("paper", state["mean_image"], state["recipe"]["input_scale"])
    centre = CropAverage(checkpoint.build_model(state), offset, scale, 1).eval()
    batch = check.photo_batch(imaging.sample_photographs(), 2)
    with torch.no_grad():
        expected = centre(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(ort(repo / "alexnet" / "1" / "model.onnx")(batch), expected, atol=1e-5)
    assert json.loads((repo / "alexnet" / "1" / "export.json").read_text())["crops"] == 1

    # versions: the next one by default; an existing one only with --force
    assert run_export(str(ckpt_path), "--repository", str(repo), "--crops", "1", *NO_DATA).returncode == 0
    assert layout.versions(repo) == [1, 2]
    before = snapshot(repo)
    proc = run_export(str(ckpt_path), "--repository", str(repo), "--version", "2", *NO_DATA)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert snapshot(repo) == before
    assert run_export(str(ckpt_path), "--repository", str(repo), "--version", "2", "--force", *NO_DATA).returncode == 0
    assert json.loads((repo / "alexnet" / "2" / "export.json").read_text())["crops"] == 10


def test_torchvision_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "alexnet-owt-test.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    repo = tmp_path / "repo"
    proc = run_export("--torchvision-weights", str(weights), "--repository", str(repo), *NO_DATA)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = (repo / "alexnet" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[-1] == "toilet tissue"
    assert all("dims: [ 1000 ]" in c.read_text() for c in configs(repo))
    # The graph normalises with /255 and ImageNet mean/std: its centre-crop variant equals
    # torchvision's own preprocessing (resize 256, centre 224, ToTensor, Normalize) on the 256 image.
    net = torchvision.models.alexnet(weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    batch = check.photo_batch(imaging.sample_photographs(), 2)
    x = torch.from_numpy(batch).float() / 255
    x = (x - torch.tensor(imaging.IMAGENET_MEAN)[:, None, None]) / torch.tensor(imaging.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = torch.softmax(net.eval()(x[:, :, 16:240, 16:240]), 1).numpy()
    centre_repo = tmp_path / "centre"
    assert run_export("--torchvision-weights", str(weights), "--repository", str(centre_repo), "--crops", "1", *NO_DATA).returncode == 0
    np.testing.assert_allclose(ort(centre_repo / "alexnet" / "1" / "model.onnx")(batch), expected, atol=1e-5)
    probs = ort(repo / "alexnet" / "1" / "model.onnx")(batch)
    assert probs.shape == (2, 1000) and np.allclose(probs.sum(1), 1, atol=1e-4)


# --- bad input: one line, non-zero, nothing written -------------------------------------------


@pytest.fixture()
def populated_repo(exported, tmp_path) -> Path:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(exported[0], repo)
    return repo


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "wrong-arch-weights", "checkpoint-as-weights"])
def test_bad_sources(kind, ckpt_path, populated_repo, tmp_path):
    before = snapshot(populated_repo)
    bad = tmp_path / "bad.pt"
    args = [str(bad)]
    if kind == "truncated":
        blob = ckpt_path.read_bytes()
        bad.write_bytes(blob[: len(blob) // 3])
    elif kind == "foreign":
        bad.write_bytes(b"GIF89a definitely not a checkpoint")
    elif kind == "wrong-arch-weights":
        from alexnet_server.train.model import alexnet

        torch.save(alexnet("paper", 1000).state_dict(), bad)
        args = ["--torchvision-weights", str(bad)]
    elif kind == "checkpoint-as-weights":
        args = ["--torchvision-weights", str(ckpt_path)]
    line = _one_line_error(run_export(*args, "--repository", str(populated_repo), *NO_DATA))
    expected = {
        "missing": "does not exist", "truncated": "not a readable checkpoint", "foreign": "not a readable checkpoint",
        "wrong-arch-weights": "does not fit torchvision's AlexNet", "checkpoint-as-weights": "is a train/ checkpoint",
    }[kind]  # fmt: skip
    assert expected in line, line
    assert snapshot(populated_repo) == before, "a failed export must leave the repository as it was"


def test_template_is_never_written(ckpt_path, tmp_path):
    """Export builds the served repository from the template; the tracked template stays as it is,
    and exporting into it is refused."""
    before = snapshot(layout.TEMPLATE)
    served = tmp_path / "served"
    proc = run_module("alexnet_server.export", str(ckpt_path), "--crops", "1", *NO_DATA, env={layout.REPOSITORY_ENV: str(served)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (served / "alexnet" / "1" / "model.onnx").is_file(), "$ALEXNET_REPOSITORY is the default --repository"
    line = _one_line_error(run_export(str(ckpt_path), "--repository", str(layout.TEMPLATE), *NO_DATA))
    assert "tracked template" in line
    assert snapshot(layout.TEMPLATE) == before, "the template changed"


def test_unwritable_repository(ckpt_path, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    line = _one_line_error(run_export(str(ckpt_path), "--repository", str(not_a_folder), *NO_DATA))
    assert "is not a folder" in line
    line = _one_line_error(run_export(str(ckpt_path), "--repository", str(not_a_folder / "sub"), *NO_DATA))
    assert "cannot write to repository" in line


def test_failed_self_check_writes_nothing(ckpt_path, populated_repo, monkeypatch, capsys):
    before = snapshot(populated_repo)
    monkeypatch.setattr(check, "ONNX_TOLERANCE", -1.0)  # no export can pass: the failure path runs for real
    assert export_cli.cli([str(ckpt_path), "--repository", str(populated_repo), *NO_DATA]) == 1
    assert "check failed, nothing written" in capsys.readouterr().err
    assert snapshot(populated_repo) == before


def test_failed_commit_rolls_back(ckpt_path, populated_repo):
    """A served file that cannot be replaced (here a folder where the ensemble's config goes) aborts
    the commit after the version moved in and some configs were written: all undone."""
    target = populated_repo / "classify" / "config.pbtxt"
    target.unlink()
    target.mkdir()
    before = snapshot(populated_repo)
    proc = run_export(str(ckpt_path), "--repository", str(populated_repo), "--crops", "1", *NO_DATA)
    assert proc.returncode != 0
    assert snapshot(populated_repo) == before and not (populated_repo / "alexnet" / "2").exists()


def test_tensorrt_unavailable_is_exit_3(ckpt_path, tmp_path):
    reason = tensorrt_engine.unavailable()
    if reason is None:
        pytest.skip("TensorRT is available here; this test covers machines without it")
    proc = run_export(str(ckpt_path), "--repository", str(tmp_path / "r"), "--tensorrt", "--fp16", *NO_DATA)
    line = _one_line_error(proc, code=3)
    assert "TensorRT is not available" in line and not (tmp_path / "r").exists()


def test_served_config_follows_the_plans_batch_limit(populated_repo):
    """ALEXNET_MAX_BATCH below 64: Triton refuses a config promising more than the engine's profile."""
    import re

    from alexnet_server.export import repository

    version = populated_repo / "alexnet" / "1"
    (version / "model.plan").write_bytes(b"an engine")
    manifest = json.loads((version / "export.json").read_text())
    manifest["tensorrt"] = {"max_batch": 8, "gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt_version": "10.5.0"}
    (version / "export.json").write_text(json.dumps(manifest))
    repository.sync_template(populated_repo, 3)
    batch = lambda path: int(re.search(r"^max_batch_size:\s*(\d+)", path.read_text(), re.M).group(1))
    assert batch(populated_repo / "alexnet" / "config.pbtxt") == 8
    assert batch(populated_repo / "classify" / "config.pbtxt") == 8, "the ensemble may not promise more than a step takes"
    assert batch(populated_repo / "alexnet" / "configs" / "cpu.pbtxt") == 16, "the CPU configs keep their own"


def test_tensorrt_builds_strongly_typed_on_10_and_11():
    # Strongly typed builds: TensorRT 10 and 11 alike; INT8 engines refused with the reason.
    assert tensorrt_engine.version_problem("10.5.0") is None and tensorrt_engine.version_problem("11.4.0") is None
    assert "needs TensorRT 10 or newer" in tensorrt_engine.version_problem("8.6.1")
    assert "symmetric INT8" in tensorrt_engine.version_problem("11.4.0", int8=True)


def test_timing_cache_is_per_gpu_and_tensorrt(tmp_path):
    a = tensorrt_engine.timing_cache_path(tmp_path, "NVIDIA H200", "9.0", "10.5.0")
    b = tensorrt_engine.timing_cache_path(tmp_path, "NVIDIA A100-SXM4-80GB", "8.0", "10.5.0")
    c = tensorrt_engine.timing_cache_path(tmp_path, "NVIDIA H200", "9.0", "10.6.0")
    assert len({a, b, c}) == 3 and a.parent == tmp_path and a.name.startswith(".tensorrt-timing-nvidia-h200-sm9.0-trt10.5.0")


def test_the_fp16_graph_a_strongly_typed_engine_is_built_from(populated_repo, tmp_path):
    """FP16 weights and arithmetic, the contract's tensors unchanged (uint8 IMAGE, float32 PROBS),
    the same probabilities as FP32 within FP16's tolerance -- in ONNX Runtime, on this CPU."""
    import onnx
    import onnxruntime as ort

    source = populated_repo / "alexnet" / "1" / "model.onnx"
    graph = onnx.load(str(tensorrt_engine.fp16_graph(source, tmp_path / "model.fp16.onnx")))
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = {init.data_type for init in graph.graph.initializer if len(init.dims) > 1}
    assert weights == {onnx.TensorProto.FLOAT16}, "the convolution and dense weights are float16"
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 256, 256), dtype=np.uint8)
    fp32 = ort.InferenceSession(str(source)).run(None, {"IMAGE": x})[0]
    fp16 = ort.InferenceSession(str(tmp_path / "model.fp16.onnx")).run(None, {"IMAGE": x})[0]
    assert np.abs(fp16 - fp32).max() < tensorrt_engine.FP16_TOLERANCE and (fp16.argmax(1) == fp32.argmax(1)).all()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(ckpt_path, tmp_path):
    reason = tensorrt_engine.unavailable()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / "repo"
    proc = run_export(str(ckpt_path), "--repository", str(repo), "--tensorrt", "--fp16", "--max-batch", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (repo / "alexnet" / "1" / "model.plan").is_file() and list(repo.glob(".tensorrt-timing-*.cache"))
    record = json.loads((repo / "alexnet" / "1" / "export.json").read_text())["tensorrt"]
    assert record["tensorrt_version"] and record["compute_capability"] and record["max_batch"] == 8
    assert "max_batch_size: 8" in (repo / "alexnet" / "config.pbtxt").read_text()
    assert "TensorRT vs ONNX Runtime" in proc.stdout


@pytest.mark.parametrize(("size", "beta"), [(5, 0.75), (4, 0.75), (5, 0.5)])
def test_exported_lrn_equals_pytorchs(size, beta):
    """The banded-convolution LRN written into the ONNX graph computes PyTorch's LRN exactly."""
    from torch import nn

    from alexnet_server.export.lrn import ChannelWindowLRN

    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 12, 9, 9, dtype=torch.float64) * 40)
    reference = nn.LocalResponseNorm(size, alpha=5e-4, beta=beta, k=2.0)
    # In float64, up to the float32 rounding of alpha/n folded into the band's weights (~3e-8).
    torch.testing.assert_close(ChannelWindowLRN(reference, 12).double()(x), reference(x), rtol=1e-7, atol=1e-12)
