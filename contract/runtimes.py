"""The exported classifier run in this process: IMAGE uint8 [N,3,256,256] -> PROBS float32 [N,C].

One definition for everything that runs the exported files: the alexnet python-backend
model (serving), export's self-checks and accuracy gates, and the in-process baselines of
``python -m export.bench`` and ``alexnet-bench --inprocess`` -- so a gate, a benchmark and
the server can never run the same file differently.

Runtimes (imported only when asked for, so ``import contract`` stays light):

- ``onnxruntime``: ONNX Runtime's CPU provider on ``model.onnx`` or ``model.int8.onnx``.
- ``openvino``: OpenVINO's CPU plugin on the same ONNX files, precision ``f32`` or ``bf16``
  (``INFERENCE_PRECISION_HINT``: bf16 runs on AMX / AVX512-BF16 in hardware), or ``int8``
  (the QDQ model, its float remainder in the CPU's best float precision).
- ``pytorch``: the TorchScript file ``model.pt`` on CUDA (bf16 autocast) or the CPU (fp32).

Errors: ``RuntimeUnavailable`` (the package or device is missing; the message says which
and how to install it), ``FileNotFoundError`` for a missing model file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import contract
from contract import cpu

RUNTIMES = ("onnxruntime", "openvino", "pytorch")
PRECISIONS = ("f32", "bf16", "int8")
# The files export writes into a version folder, by what they hold.
FILES = {"f32": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.pt", "plan": "model.plan"}


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


def onnxruntime(path: str | os.PathLike, threads: int = 0, max_images_per_run: int = 0) -> Runtime:
    """ONNX Runtime, CPU provider, all graph optimisations; ``threads`` 0 = every core."""
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
    precision = "int8" if path.name == FILES["int8"] else "f32"

    def run(images):
        return session.run([contract.PROBS], {contract.IMAGE: images})[0]

    return Runtime("onnxruntime", precision, path, options.intra_op_num_threads, "CPU", run, max_images_per_run)


def openvino(
    path: str | os.PathLike, precision: str = "f32", threads: int = 0, streams: int = 1, max_images_per_run: int = 0
) -> Runtime:
    """OpenVINO on the CPU.  ``precision`` f32/bf16 sets INFERENCE_PRECISION_HINT on the fp32
    model; ``int8`` runs the quantized (QDQ) model with the float remainder in bf16 where the
    CPU has it natively.  ``streams`` > 1 splits each batch across that many parallel infer
    requests of ``threads // streams`` threads each (throughput on several cores)."""
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("OpenVINO is not installed (pip install '.[serve]' or openvino)") from None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not cpu.has_native_bf16():
        raise RuntimeUnavailable("bf16 needs a CPU with AMX or AVX512-BF16; this one has neither (use f32)")
    path = Path(path)
    if path.is_dir():
        path = path / FILES["int8" if precision == "int8" else "f32"]
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
        raise ValueError(f"precision must be one of {', '.join(dtypes)}, got {precision!r}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice (export/torchscript.py says why)
        module = torch.jit.load(str(path), map_location=device).eval()
    dev = torch.device(device)
    autocast = dict(device_type=dev.type, dtype=dtypes[precision] or torch.float32, enabled=dtypes[precision] is not None)

    def run(images):
        with torch.inference_mode(), torch.autocast(**autocast):
            x = to_torch(images).to(dev, non_blocking=True)
            return to_numpy(module(x).float().cpu())

    threads = torch.get_num_threads() if dev.type == "cpu" else 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return Runtime("pytorch", precision, path, threads, name, run, max_images_per_run)


def to_torch(array):
    """numpy -> torch; through the buffer protocol where this torch was built for another NumPy
    major (the python-backend stub runs NumPy 1.26 beside a torch built against NumPy 2)."""
    import torch

    try:
        return torch.from_numpy(array)
    except (RuntimeError, TypeError):
        import numpy as np

        array = np.ascontiguousarray(array)
        return torch.frombuffer(bytearray(array.tobytes()), dtype=getattr(torch, array.dtype.name)).reshape(array.shape)


def to_numpy(tensor):
    """torch (CPU) -> numpy, with the same fallback as ``to_torch``."""
    import numpy as np

    try:
        return tensor.numpy()
    except (RuntimeError, TypeError):
        return np.asarray(tensor.tolist(), dtype=str(tensor.dtype).removeprefix("torch."))


# Which OpenVINO precision serves fastest on which CPU (alexnet-serve --config cpu, precision
# auto).  Measured by `python -m export.bench`, 10-crop paper AlexNet, 2 cores each (see
# docs/RESULTS.md for the commands and the full tables):
#   CPU                                      f32     bf16    int8 (img/s, in-process)
#   Intel Xeon, AMX + AVX512-BF16             15.9    67.1    76-81   (the figures)
#   AMD EPYC, AVX512-BF16 + VNNI, no AMX      see docs/RESULTS.md
# INT8 is chosen where the CPU has integer matrix instructions (AMX-INT8 or AVX512-VNNI /
# AVX-VNNI) and export's gate passed it; else bf16 where native and gated; else f32.
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


def gated_precisions(manifest: dict) -> set[str]:
    """The CPU precisions a version may be served in: f32, and bf16 / int8 where export's
    accuracy gate passed them (or --accept-disagreement accepted them), per export.json."""
    record = manifest.get("cpu_precisions") or {}
    allowed = {"f32"}
    for precision in ("bf16", "int8"):
        entry = record.get(precision) or {}
        if entry.get("passed") or entry.get("accepted_below_threshold"):
            allowed.add(precision)
    return allowed


def choose_cpu_precision(cpu_flags: Iterable[str] | None = None, allowed: Iterable[str] = ("f32",)) -> tuple[str, str]:
    """(precision, why) for the OpenVINO CPU runtime from the CPU's feature flags, among ``allowed``."""
    flags, allowed = set(cpu.flags() if cpu_flags is None else cpu_flags), set(allowed)
    int8_units = [f for f in INT8_FLAGS if f in flags]
    bf16_unit = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    if "int8" in allowed and int8_units:
        return "int8", f"int8: the CPU has {int8_units[0]} and export's gate passed int8"
    if "bf16" in allowed and bf16_unit:
        return "bf16", f"bf16: the CPU has {bf16_unit} and export's gate passed bf16" + ("" if "int8" in allowed else " (no gated int8 model)")
    why = "no bf16 unit (AMX or AVX512-BF16)" if not bf16_unit else "bf16 not gated at export"
    return "f32", f"f32: {why}" + ("" if "int8" in allowed or not int8_units else "; no gated int8 model")


TIMING_SECONDS = 1.5  # per precision, after a warm-up run: enough to tell 1.2x apart on 2 cores
TIMING_IMAGES_PER_RUN = 4  # the cpu config's max_images_per_run: the runs the server makes


def time_cpu_precisions(version: str | os.PathLike, precisions: Iterable[str], threads: int = 0, streams: int = 1,
                        max_images_per_run: int = TIMING_IMAGES_PER_RUN, seconds: float = TIMING_SECONDS) -> dict[str, float]:  # fmt: skip
    """{precision: images/s} of OpenVINO on this CPU, in-process, for each precision: 10-crop
    images (uint8, 2 runs of ``max_images_per_run``) repeated for ``seconds`` after a warm-up."""
    import time

    import numpy as np

    import imaging

    per_run = max_images_per_run or TIMING_IMAGES_PER_RUN
    images = np.random.default_rng(0).integers(0, 256, (2 * per_run, 3, imaging.SIZE, imaging.SIZE), dtype=np.uint8)
    rates = {}
    for precision in precisions:
        run = openvino(version, precision, threads, streams, per_run)
        run(images)  # the first run compiles and fills caches
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            run(images)
            done += len(images)
        rates[precision] = round(done / elapsed, 2)
    return rates


def same_cpu(a: dict | None, b: dict | None) -> bool:
    """Whether two ``cpu.describe()`` records are one kind of CPU for timing: model, cores, flags."""
    keys = ("model", "cores", "flags")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


def choose_measured_precision(allowed: Iterable[str], recorded: dict | None, here: dict,
                              measure: Callable[[list[str]], dict[str, float]]) -> tuple[str, str]:  # fmt: skip
    """(precision, why) for the OpenVINO CPU runtime: the fastest measured on this CPU among the
    precisions export's gates ``allowed``.

    ``recorded`` is export.json's timing record ({"cpu": cpu.describe(), "images_per_s": {...}});
    it is used when it was taken on this kind of CPU (``here``) and covers every candidate,
    else ``measure(candidates)`` times them now.  The CPU's flags only order the candidates:
    they break a tie (within 3%), they never decide alone (DESIGN.md: the fastest measured
    CPU runtime for the CPU it runs on)."""
    flag_choice, _ = choose_cpu_precision([f for f, on in here.get("flags", {}).items() if on], allowed)
    order = [flag_choice] + [p for p in ("int8", "bf16", "f32") if p in set(allowed) and p != flag_choice]
    if len(order) == 1:
        return order[0], f"{order[0]}: the only precision export's gates passed"
    recorded = recorded or {}
    rates = recorded.get("images_per_s") or {}
    if same_cpu(recorded.get("cpu"), here) and all(p in rates for p in order):
        source = "measured at export on this CPU"
    else:
        why_now = "export's timings are from another CPU" if rates else "export recorded no timings"
        rates, source = measure(order), f"measured at start ({why_now})"
    best = max(rates[p] for p in order)
    chosen = next(p for p in order if rates[p] >= 0.97 * best)
    figures = ", ".join(f"{p} {rates[p]:.2f}" for p in sorted(order, key=lambda p: -rates[p]))
    return chosen, f"{chosen}: fastest {source}, images/s: {figures}"


def cpu_precision_for(version: str | os.PathLike, requested: str, here: dict | None = None,
                      measure: Callable[[list[str]], dict[str, float]] | None = None) -> tuple[str, str]:  # fmt: skip
    """(precision, why) to serve ``version`` in: ``requested`` auto/f32/bf16/int8, checked against
    the version's export.json gates.  auto: the fastest measured on this CPU (``here``, default
    ``cpu.describe()``; ``measure`` defaults to ``time_cpu_precisions`` on the version).
    RuntimeUnavailable for a precision export did not pass."""
    from contract import layout

    manifest_path = Path(version) / layout.MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    allowed = gated_precisions(manifest)
    if requested == "auto":
        record = (manifest.get("cpu_precisions") or {}).get("timings")
        return choose_measured_precision(allowed, record, here or cpu.describe(), measure or (lambda ps: time_cpu_precisions(version, ps)))
    if requested not in allowed:
        entry = (manifest.get("cpu_precisions") or {}).get(requested) or {}
        detail = entry.get("skipped") or ("its gate failed" if entry else "export did not check it")
        raise RuntimeUnavailable(f"precision {requested} is not served from {Path(version).name}: {detail} "
                                 f"(re-export on a machine that can check it{', with --int8' if requested == 'int8' else ''})")  # fmt: skip
    return requested, "asked for"
