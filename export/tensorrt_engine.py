"""TensorRT: build ``model.plan`` from the ONNX classifier with the Python API, and run it.

A plan loads only on the GPU model (compute capability) and in the TensorRT version that
built it, so it is built on the host that serves it (the container's entrypoint does it at
start) with the ``tensorrt`` wheel of the container's libnvinfer (the Dockerfile installs that
exact version; NGC 26.07), and ``build`` records the GPU and the version beside it
(export.json "tensorrt"); ``contract.gpu.plan_matches`` compares that record with a host.

No PyTorch here: buffers and streams come from the CUDA runtime through cuda-python, so the
image needs no torch built for its driver.  ``unavailable()`` says in one line what is
missing (the tensorrt module, cuda-python, a GPU).

Precisions are the graph's, the strongly typed way (TensorRT 11 removed the FP16 and INT8
builder flags and the implicit INT8 calibrators; TensorRT 10 builds strongly typed networks
too, so there is one way for both): FP32 from ``model.onnx``, FP16 from an FP16 copy of it
(``fp16_graph``: weights and arithmetic in float16, the uint8 IMAGE and float32 PROBS kept).
INT8 engines are not built: a strongly typed INT8 network needs symmetric INT8 Q/DQ, and
``model.int8.onnx`` quantizes activations as asymmetric uint8 for the CPU runtimes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from alexnet_server import imaging
from alexnet_server.contract import IMAGE, PROBS, files, gpu

FP16_TOLERANCE = 1e-2
FP32_TOLERANCE = 1e-4
MIN_TOP1_AGREEMENT = 0.99
SHAPE = (3, imaging.SIZE, imaging.SIZE)
MIN_MAJOR = 10  # strongly typed networks with the ONNX parser's types: TensorRT 10 and newer


class TensorRTUnavailable(RuntimeError):
    """Building or running an engine is not possible here; the message says why in one line."""


def tolerance(fp16: bool) -> float:
    return FP16_TOLERANCE if fp16 else FP32_TOLERANCE


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (13: the only place)
    except ImportError:
        from cuda import cudart  # cuda-python 12 before 12.6
    return cudart


def unavailable() -> str | None:
    """None when an engine can be built here, else the reason in one line."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not available: the tensorrt Python module is not installed (pip install '.[gpu]' on a GPU host)"
    try:
        cudart = _cudart()
    except ImportError:
        return "TensorRT is not available: cuda-python is not installed (pip install '.[gpu]')"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return "TensorRT is not available: no CUDA GPU is visible on this machine"
    return None


def version_problem(version: str, int8: bool = False) -> str | None:
    """Why this TensorRT cannot build the engine asked for (None when it can)."""
    if int(version.split(".")[0]) < MIN_MAJOR:
        return f"TensorRT {version} is too old: engines are built strongly typed, which needs TensorRT {MIN_MAJOR} or newer"
    if int8:
        return ("INT8 engines are not built: a strongly typed INT8 network needs symmetric INT8 Q/DQ, and model.int8.onnx "
                "quantizes activations as asymmetric uint8 for the CPU runtimes (use --fp16)")  # fmt: skip
    return None


def fp16_graph(onnx_path: Path, out: Path) -> Path:
    """``out``: the FP32 classifier with its weights and arithmetic in float16, IMAGE (uint8) and PROBS
    (float32) unchanged -- what a strongly typed FP16 engine is built from.  The converter is
    ONNX Runtime's (onnxruntime.transformers.float16), which the export and GPU installs carry."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out))
    return out


def timing_cache_path(folder: Path, gpu_name: str, capability: str, version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: timings of one GPU mislead another."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return Path(folder) / f".tensorrt-timing-{slug}-sm{capability}-trt{version}.cache"


def build(onnx_path: Path, plan_path: Path, max_batch: int, cache_folder: Path) -> dict:
    """Build a strongly typed engine from ``onnx_path`` (its types are the precision: ``model.onnx``
    FP32, ``fp16_graph``'s copy FP16) with one serving profile (batch 1..``max_batch``, tuned for
    ``max_batch``).  Returns the record for export.json: the TensorRT version, the GPU's name and
    compute capability, the timing cache used.  Raises TensorRTUnavailable (version) or
    RuntimeError (parse, build)."""
    import tensorrt as trt

    if problem := version_problem(trt.__version__):
        raise TensorRTUnavailable(problem)
    here = gpu.visible_gpus()
    gpu_name, capability = (here[0]["name"], here[0]["compute_capability"]) if here else ("unknown GPU", "?")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    cache_path = timing_cache_path(cache_folder, gpu_name, capability, trt.__version__)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT (or a damaged file): start from an empty one.
        cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError("TensorRT refused an empty timing cache")
    profile = builder.create_optimization_profile()
    profile.set_shape(IMAGE, (1, *SHAPE), (max_batch, *SHAPE), (max_batch, *SHAPE))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(serialized))
    files.atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, "gpu": gpu_name, "compute_capability": capability, "timing_cache": cache_path.name}


class _DeviceBuffer:
    """cudaMalloc'd memory, freed with the object."""

    def __init__(self, nbytes: int) -> None:
        self.cudart = _cudart()
        err, self.ptr = self.cudart.cudaMalloc(max(1, nbytes))
        _check(err, "cudaMalloc")
        self.nbytes = nbytes

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.cudart.cudaFree(self.ptr)


def _check(err, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: CUDA error {int(err)}")


def runner(plan_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Run the engine on uint8 [N,3,256,256] batches: copies in, execute, copy out, on one CUDA stream."""
    import tensorrt as trt

    cudart = _cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT {trt.__version__} cannot load {plan_path} (built for another GPU or TensorRT?)")
    context = engine.create_execution_context()
    num_classes = int(engine.get_tensor_shape(PROBS)[-1])
    err, stream = cudart.cudaStreamCreate()
    _check(err, "cudaStreamCreate")

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        out = np.empty((len(batch), num_classes), dtype=np.float32)
        inp, res = _DeviceBuffer(batch.nbytes), _DeviceBuffer(out.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(inp.ptr, batch.ctypes.data, batch.nbytes, h2d, stream)[0], "cudaMemcpyAsync")
        context.set_input_shape(IMAGE, tuple(batch.shape))
        context.set_tensor_address(IMAGE, int(inp.ptr))
        context.set_tensor_address(PROBS, int(res.ptr))
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, res.ptr, out.nbytes, d2h, stream)[0], "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(stream)[0], "cudaStreamSynchronize")
        return out

    return run
