"""Triton python backend: alexnet, IMAGE uint8 [N,3,256,256] -> PROBS float32 [N,C].

The exported 10-crop classifier (or centre-crop, per export) run in-process by the runtime
the config names -- ``parameters { key: "runtime" }``:

- ``openvino``   configs/cpu.pbtxt, cpu-f32/-bf16/-int8: OpenVINO on the CPU; precision
                 ``auto`` picks the fastest measured for this CPU's features and logs why.
- ``onnxruntime`` configs/cpu-onnxruntime.pbtxt: ONNX Runtime's CPU provider (the baseline).
- ``pytorch``    configs/pytorch.pbtxt: the TorchScript file on CUDA (bf16 autocast) when a
                 GPU is visible, else on the CPU in fp32 -- the same code either way.

``alexnet-export`` copies this file into every version folder it writes (Triton loads
``<version>/model.py``); the version's files and gates are opened by ``runtime.Version``,
as export's checks and the benchmarks open them.  Small and total: everything is built in
``initialize``; ``execute`` concatenates the requests of a dynamic batch, runs them
``max_images_per_run`` images at a time, and returns exactly one response per request --
an INVALID_ARG error naming the problem for a request whose IMAGE is not uint8
[n,3,256,256], the probabilities for the others.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from alexnet_server import contract
from alexnet_server import imaging
from alexnet_server.runtime import ChoiceError, RecordError, RuntimeUnavailable, ServedConfig, Version
from alexnet_server.runtime.model_config import ConfigError

SHAPE = (3, imaging.SIZE, imaging.SIZE)  # the config's dims say the same, and Triton checks them first


class TritonPythonModel:
    def initialize(self, args):
        try:
            # Every parameter of the config, read once (runtime.ServedConfig): runtime, precision,
            # threads (0: the cores split among the instances), streams, images per run.
            config = ServedConfig.from_model_config(json.loads(args["model_config"]))
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"alexnet: {exc}") from None
        gpu = args.get("model_instance_kind") == "GPU"
        try:
            # openvino auto: the fastest measured on this CPU; timed again here (seconds) only
            # when export's timings come from another kind of CPU.
            version = Version(Path(args["model_repository"]) / args["model_version"])
            self.runtime = config.open(version, device=f"cuda:{args['model_instance_device_id']}" if gpu else "auto")
        except (RuntimeUnavailable, RecordError, ChoiceError, FileNotFoundError) as exc:
            raise pb_utils.TritonModelException(f"alexnet ({config.runtime}): {exc}") from None
        note = f"; precision {self.runtime.why}" if self.runtime.why else ""
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: {self.runtime.describe()}{note}")

    def execute(self, requests):
        batches, problems = [], []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, contract.IMAGE).as_numpy()
            problem = None
            if image.dtype != np.uint8:
                problem = f"{contract.IMAGE} must be uint8, got {image.dtype}"
            elif image.ndim != 4 or image.shape[1:] != SHAPE:
                problem = f"{contract.IMAGE} must be [N,{','.join(map(str, SHAPE))}], got {list(image.shape)}"
            batches.append(None if problem else image)
            problems.append(problem)
        good = [b for b in batches if b is not None]
        probs = self.runtime(np.ascontiguousarray(np.concatenate(good))) if good else None
        responses, start = [], 0
        for batch, problem in zip(batches, problems):
            if problem:
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            end = start + len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.PROBS, probs[start:end])]))
            start = end
        return responses
