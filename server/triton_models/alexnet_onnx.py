"""Triton python backend: alexnet on the CPU, ONNX Runtime running the exported model
(``onnx_file``: model.onnx or model.int8.onnx).

The requests of a dynamically batched call are concatenated and run ``max_images_per_run``
images at a time (0: all at once); each request gets exactly one response.  A request
whose IMAGE is not uint8 [n,3,256,256] gets an INVALID_ARG error naming the problem while
the others succeed.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

SHAPE = (3, 256, 256)


def _share_of_cores(config: dict) -> int:
    """intra_op_threads 0: the cores available to the server, split evenly among the
    model's instances (each instance is its own process with its own ONNX Runtime pool)."""
    instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
    return max(1, len(os.sched_getaffinity(0)) // instances)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads", "0")) or _share_of_cores(config)
        filename = params.get("onnx_file", "model.onnx")
        # At most this many images per ONNX Runtime run (0: the whole batch).  ONNX Runtime's
        # arena keeps the largest run's activations, so this bounds each instance's memory.
        self.images_per_run = int(params.get("max_images_per_run", "0"))
        path = Path(args["model_repository"]) / args["model_version"] / filename
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{path} is missing: run alexnet-export first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: ONNX Runtime on {filename}, {threads} intra-op thread(s)")

    def execute(self, requests):
        batches, problems = [], []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            problem = None
            if image.dtype != np.uint8:
                problem = f"IMAGE must be uint8, got {image.dtype}"
            elif image.ndim != 4 or image.shape[1:] != SHAPE:
                problem = f"IMAGE must be [N,3,256,256], got {list(image.shape)}"
            batches.append(None if problem else image)
            problems.append(problem)
        good = [b for b in batches if b is not None]
        probs = self._run(np.concatenate(good)) if good else None
        responses, start = [], 0
        for batch, problem in zip(batches, problems):
            if problem:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)))
                continue
            end = start + len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBS", probs[start:end])]))
            start = end
        return responses

    def _run(self, images: np.ndarray) -> np.ndarray:
        step = self.images_per_run or len(images)
        parts = [self.session.run(["PROBS"], {"IMAGE": images[i : i + step]})[0] for i in range(0, len(images), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
