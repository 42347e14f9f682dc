"""The runtimes that run an exported file in this process: IMAGE uint8 [N,3,256,256] -> PROBS float32 [N,C].

Constructors only; which file and which precision a caller gets is ``runtime.version``'s
decision (``Version.open``).  Each runtime package is imported only when asked for, so
``import runtime`` stays light:

- ``onnxruntime``: ONNX Runtime's CPU provider on ``model.onnx`` or ``model.int8.onnx``.
- ``openvino``: OpenVINO's CPU plugin on the same ONNX files, precision ``f32`` or ``bf16``
  (``INFERENCE_PRECISION_HINT``: bf16 runs on AMX / AVX512-BF16 in hardware), or ``int8``
  (the QDQ model, its float remainder in the CPU's best float precision).
- ``pytorch``: the TorchScript file ``model.pt`` on CUDA (bf16 autocast) or the CPU (fp32).

Errors: ``RuntimeUnavailable`` (the package or device is missing; the message says which
and how to install it), ``FileNotFoundError`` for a missing model file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_server import contract
from alexnet_server.contract import cpu

PRECISIONS = ("f32", "bf16", "int8")  # OpenVINO's CPU precisions


class ChoiceError(ValueError):
    """A runtime or precision this project does not have (a user's typo, said in one line)."""


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run here (package not installed, no GPU); the message says which."""


@dataclass
class Runtime:
    """A loaded classifier: ``runtime(images) -> probs``, run ``max_images_per_run`` images at a time.

    ``max_images_per_run`` (0 = the whole batch) bounds the activations a run holds: ONNX
    Runtime's arena and OpenVINO's buffers keep the largest run's (10 crops an image).
    """

    name: str  # onnxruntime | openvino | pytorch
    precision: str  # f32 | bf16 | int8 | fp16
    path: Path
    threads: int
    device: str
    _run: Callable = field(repr=False)
    max_images_per_run: int = 0
    why: str = ""  # how the precision was chosen (runtime.version.Version.open)

    def __call__(self, images):
        import numpy as np

        step = self.max_images_per_run or len(images)
        parts = [self._run(images[i : i + step]) for i in range(0, len(images), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device} ({self.threads} thread(s)), {self.path.name}"


def _require(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run alexnet-export first")
    return path


def onnxruntime(path: str | os.PathLike, threads: int = 0, max_images_per_run: int = 0, precision: str = "f32") -> Runtime:
    """ONNX Runtime, CPU provider, all graph optimisations; ``threads`` 0 = every core.
    ``precision`` names what the file holds (f32, or int8 for the QDQ model), for ``describe``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailable("ONNX Runtime is not installed (pip install '.[serve]' or onnxruntime)") from None
    path = _require(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu.cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images):
        return session.run([contract.PROBS], {contract.IMAGE: images})[0]

    return Runtime("onnxruntime", precision, path, options.intra_op_num_threads, "CPU", run, max_images_per_run)


def openvino(
    path: str | os.PathLike, precision: str = "f32", threads: int = 0, streams: int = 1, max_images_per_run: int = 0
) -> Runtime:
    """OpenVINO on the CPU, on the ONNX file ``path``.  ``precision`` f32/bf16 sets
    INFERENCE_PRECISION_HINT on the fp32 model; ``int8`` means ``path`` is the quantized (QDQ)
    model, its float remainder run in bf16 where the CPU has it natively.  ``streams`` > 1
    splits each batch across that many parallel infer requests of ``threads // streams``
    threads each (throughput on several cores)."""
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("OpenVINO is not installed (pip install '.[serve]' or openvino)") from None
    if precision not in PRECISIONS:
        raise ChoiceError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not cpu.has_native_bf16():
        raise RuntimeUnavailable("bf16 needs a CPU with AMX or AVX512-BF16; this one has neither (use f32)")
    path = _require(path)
    threads = threads or cpu.cores()
    streams = max(1, min(streams, threads))
    float_precision = precision if precision != "int8" else ("bf16" if cpu.has_native_bf16() else "f32")
    core = ov.Core()
    compiled = core.compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": float_precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": streams,
            # Our own batching decides the work per request; no hint-driven auto-batching.
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        },
    )
    output = compiled.output(0)
    if streams == 1:
        request = compiled.create_infer_request()

        def run(images):
            # The output tensor is reused by the next call: hand back a copy.
            return request.infer({0: images}, share_inputs=True)[output].copy()

    else:
        import numpy as np

        queue = ov.AsyncInferQueue(compiled, streams)

        def run(images):
            chunks = np.array_split(images, min(streams, len(images)))
            results: list = [None] * len(chunks)
            queue.set_callback(lambda request, index: results.__setitem__(index, request.get_output_tensor(0).data.copy()))
            for index, chunk in enumerate(chunks):
                queue.start_async({0: np.ascontiguousarray(chunk)}, index)
            queue.wait_all()
            return np.concatenate(results)

    return Runtime("openvino", precision, path, threads, f"CPU, {streams} stream(s)", run, max_images_per_run)


def pytorch(path: str | os.PathLike, device: str = "auto", precision: str = "auto", max_images_per_run: int = 0) -> Runtime:
    """The TorchScript classifier on CUDA (``precision`` auto = bf16 autocast) or the CPU (f32).

    ``device`` auto picks CUDA where PyTorch sees a GPU.  Softmax and the crop average stay
    float32 inside the graph; autocast changes only the convolutions and matrix products.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailable("PyTorch is not installed (pip install '.[gpu]' or torch)") from None
    path = _require(path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeUnavailable("no CUDA GPU is visible to PyTorch")
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "f32"
    dtypes = {"f32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ChoiceError(f"precision must be one of {', '.join(dtypes)}, got {precision!r}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice (export/torchscript.py says why)
        module = torch.jit.load(str(path), map_location=device).eval()
    dev = torch.device(device)
    autocast = dict(device_type=dev.type, dtype=dtypes[precision] or torch.float32, enabled=dtypes[precision] is not None)

    from alexnet_server.imaging.gpu import to_numpy, to_torch

    def run(images):
        with torch.inference_mode(), torch.autocast(**autocast):
            x = to_torch(images).to(dev, non_blocking=True)
            return to_numpy(module(x).float().cpu())

    threads = torch.get_num_threads() if dev.type == "cpu" else 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return Runtime("pytorch", precision, path, threads, name, run, max_images_per_run)
