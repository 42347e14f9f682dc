"""TensorRT: build ``model.plan`` from the ONNX classifier with the Python API, and run it.

Engines are tied to a GPU model and a TensorRT version, so they are built on the host
that serves them (the Dockerfile does it at container start).  Everything here needs the
``tensorrt`` module and a CUDA GPU; ``unavailable()`` says which is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

import imaging

FP16_TOLERANCE = 1e-2
FP32_TOLERANCE = 1e-4
INT8_TOLERANCE = 5e-2
MIN_TOP1_AGREEMENT = 0.99


def unavailable() -> str | None:
    """None when an engine can be built here, else the reason in one line."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not available: the tensorrt Python module is not installed (pip install '.[gpu]' on a GPU host)"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT is not available: no CUDA GPU is visible on this machine"
    return None


def build(onnx_path: Path, plan_path: Path, max_batch: int, fp16: bool, timing_cache: Path, calibration: np.ndarray | None = None) -> None:
    """One optimization profile: min batch 1, opt = max = ``max_batch``; the timing cache is reused and updated.

    With ``calibration`` (uint8 images), INT8 kernels are enabled and calibrated by an
    entropy calibrator whose cache is written beside the engine (``model.plan.calibration``).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if calibration is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _entropy_calibrator(calibration, plan_path.with_name(plan_path.name + ".calibration"), max_batch)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    shape = (3, imaging.SIZE, imaging.SIZE)
    profile = builder.create_optimization_profile()
    profile.set_shape("IMAGE", (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    if calibration is not None:
        config.set_calibration_profile(profile)  # dynamic batch: calibrate inside the same profile
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(serialized))
    tmp = timing_cache.with_name(timing_cache.name + ".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(timing_cache)


def _entropy_calibrator(images: np.ndarray, cache_path: Path, max_batch: int):
    """IInt8EntropyCalibrator2 over uint8 images, batches in CUDA memory owned by PyTorch."""
    import tensorrt as trt
    import torch

    batch_size = min(8, max_batch)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = [images[i : i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]
            self.current = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            if not self.batches:
                return None
            self.current = torch.from_numpy(np.ascontiguousarray(self.batches.pop(0))).cuda()
            return [self.current.data_ptr()]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            cache_path.write_bytes(bytes(cache))

    return Calibrator()


def runner(plan_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run the engine on uint8 [N,3,256,256] batches (buffers are CUDA tensors from PyTorch)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    num_classes = engine.get_tensor_shape("PROBS")[-1]

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        out = torch.empty((len(batch), num_classes), dtype=torch.float32, device="cuda")
        context.set_input_shape("IMAGE", tuple(x.shape))
        context.set_tensor_address("IMAGE", x.data_ptr())
        context.set_tensor_address("PROBS", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()

    return run
