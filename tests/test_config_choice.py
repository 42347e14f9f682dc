"""alexnet-serve's choice of config: by the Triton's backends, the host's GPUs (a fake nvidia-smi),
and what the latest version holds -- fake layouts, no GPU needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from alexnet_server.contract import gpu
from alexnet_server.runtime import ExportRecord
from alexnet_server.server.config_choice import choose_config
from alexnet_server.server.triton import ServeError
from alexnet_server.contract.layout import TEMPLATE

ROOT_TEMPLATE = TEMPLATE / "alexnet"

H200 = [{"name": "NVIDIA H200", "compute_capability": "9.0"}]
RECORD = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt_version": "10.5.0"}


def version(tmp_path: Path, *files: str, record: dict | None = None) -> Path:
    folder = tmp_path / "repo" / "alexnet" / "1"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    if record is not None:
        ExportRecord(arch="paper", crops=10, classes=3, source="test", exported="2026-12-01T00:00:00+00:00", tensorrt=record).write(folder)
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
    choice = choose_config("auto", repo, backends, gpus, trt)
    assert choice.config.name == expected and choice.warning is None, choice.why


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


# --- the config variants: one description each, kept in step ----------------------------------------


def _parsed(name: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from alexnet_server.contract import layout

    return text_format.Parse((layout.TEMPLATE / "alexnet" / "configs" / f"{name}.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("variant, differs", [
    # cpu's runtime is auto (measured); the variants force OpenVINO in one precision
    ("cpu-f32", {"precision", "runtime"}), ("cpu-bf16", {"precision", "runtime"}), ("cpu-int8", {"precision", "runtime"}),
    # the ONNX Runtime baseline: its own runtime, no OpenVINO streams, its own measured queue delay
    ("cpu-onnxruntime", {"precision", "runtime", "streams", "max_queue_delay_microseconds"}),
])  # fmt: skip
def test_cpu_variants_are_the_cpu_config_but_for_what_they_fix(variant, differs):
    """configs/cpu-*.pbtxt are near-copies of cpu.pbtxt that Triton needs as files: a change to one
    (batching, queue policy, instances, inputs) must be made to all, or this fails."""
    base, other = _parsed("cpu"), _parsed(variant)
    for config in (base, other):
        for key in differs & {"precision", "runtime", "streams"}:
            if key in config.parameters:
                del config.parameters[key]
        if "max_queue_delay_microseconds" in differs:
            config.dynamic_batching.max_queue_delay_microseconds = 0
    assert base == other, f"{variant}.pbtxt differs from cpu.pbtxt beyond {sorted(differs)}"
    fixed = _parsed(variant).parameters["precision"].string_value
    assert fixed in ("f32", "bf16", "int8") and variant.endswith(fixed) or variant == "cpu-onnxruntime"


def test_serve_configs_come_from_the_template():
    """alexnet-serve's --config choices and what each needs are read from the pbtxt files: no second list."""
    from alexnet_server.runtime import served_configs
    from alexnet_server.server.config_choice import CONFIGS

    on_disk = {p.stem for p in (ROOT_TEMPLATE / "configs").glob("*.pbtxt")} | {"tensorrt"}
    assert set(CONFIGS) == on_disk == set(served_configs())
    assert CONFIGS["cpu-int8"].needs() == ["int8", "code"] and CONFIGS["cpu-int8"].export_flags() == "--int8"
    assert CONFIGS["pytorch"].needs() == ["torchscript", "code"] and CONFIGS["tensorrt"].model_config_name is None
    assert CONFIGS["onnxruntime"].needs() == ["f32"] and CONFIGS["cpu"].max_images_per_run == 4
