"""alexnet-serve's choice of config: by the Triton's backends, the host's GPUs (a fake nvidia-smi),
and what the latest version holds -- fake layouts, no GPU needed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from contract import gpu
from server.cli import choose_config
from server.triton import ServeError

H200 = [{"name": "NVIDIA H200", "compute_capability": "9.0"}]
RECORD = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt_version": "10.5.0"}


def version(tmp_path: Path, *files: str, record: dict | None = None) -> Path:
    folder = tmp_path / "repo" / "alexnet" / "1"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    if record is not None:
        (folder / "export.json").write_text(json.dumps({"tensorrt": record}))
    return tmp_path / "repo"


@pytest.mark.parametrize(
    "backends, gpus, files, record, trt, expected",
    [
        ({"python"}, [], ("model.onnx",), None, None, "cpu"),  # the wheel's Triton on a CPU machine
        ({"python"}, H200, ("model.onnx", "model.plan"), RECORD, None, "cpu"),  # a plan, but no TensorRT backend: not tensorrt
        ({"python"}, H200, ("model.onnx", "model.pt"), None, None, "pytorch"),  # the wheel's Triton on a GPU machine
        ({"python", "tensorrt"}, H200, ("model.onnx", "model.plan", "model.pt"), RECORD, "10.5.0", "tensorrt"),
        ({"python", "tensorrt"}, H200, ("model.onnx", "model.plan", "model.pt"), RECORD, "10.6.0", "pytorch"),  # other TensorRT
        ({"python", "tensorrt"}, [{"name": "NVIDIA A100", "compute_capability": "8.0"}], ("model.plan",), RECORD, "10.5.0", "cpu"),
        ({"python", "tensorrt"}, H200, ("model.onnx", "model.pt"), None, "10.5.0", "pytorch"),  # no plan
    ],
)
def test_auto(tmp_path, backends, gpus, files, record, trt, expected):
    repo = version(tmp_path, *files, record=record)
    config, why = choose_config("auto", repo, backends, gpus, trt)
    assert config == expected, why


@pytest.mark.parametrize("config, backend", [("tensorrt", "tensorrt"), ("onnxruntime", "onnxruntime")])
def test_a_config_the_triton_cannot_run_is_refused(tmp_path, config, backend):
    repo = version(tmp_path, "model.onnx")
    with pytest.raises(ServeError, match=f"needs Triton's {backend} backend; this Triton has only python"):
        choose_config(config, repo, {"python"}, H200, None)


def test_fake_nvidia_smi_is_read(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 9.0'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu.visible_gpus() == H200
    broken = tmp_path / "nvidia-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert gpu.visible_gpus() == []


def test_libnvinfer_version_from_the_library_name(tmp_path):
    (tmp_path / "libnvinfer.so.10.5.0").write_bytes(b"")
    (tmp_path / "libnvinfer.so.8.6.1").write_bytes(b"")
    assert gpu.libnvinfer_version((str(tmp_path),)) == "10.5.0"
    assert gpu.libnvinfer_version((str(tmp_path / "none"),)) is None
