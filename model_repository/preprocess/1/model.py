"""Triton python backend: IMAGE_BYTES (encoded image) -> IMAGE uint8 [3,256,256].

Small and total: everything is built in initialize(); execute() decodes every image of
every request in the dynamically batched call in parallel threads, and returns exactly one
response per request -- an INVALID_ARG error naming the problem for a bad image, the
pixels for the others.  The pixels come from the shared ``imaging`` module, the same code
training and the clients use (no train/serve skew).

Memory is bounded per image: an encoded image over ``contract.security.MAX_IMAGE_BYTES`` (the
limit the server's front sizes its request cap from) is refused before it is decoded, one over ``max_pixels`` (or whose decoded size would pass imaging's
MAX_DECODE_BYTES) is refused from its header, and a decode holds only its source and
256x256 working images (imaging/pipeline.py).  With ``decode_threads`` decoding at once, the
peak is about decode_threads x (MAX_DECODE_BYTES + 1 MB) (README, "Bounded memory").

``decode_device``: ``auto`` decodes the batch's JPEGs on the GPU (nvJPEG, imaging/gpu.py) where
nvidia-smi shows a GPU and torch/torchvision can use it, else on the CPU; ``cpu`` always on
the CPU.  Other formats, and JPEGs the GPU path does not take, go through the CPU path, which
also names the problem of every bad image.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from alexnet_server import imaging
from alexnet_server.contract import IMAGE, IMAGE_BYTES, gpu
from alexnet_server.contract.security import MAX_IMAGE_BYTES


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("decode_threads", "0")) or len(os.sched_getaffinity(0))
        self.max_pixels = int(params.get("max_pixels", imaging.MAX_PIXELS))
        self.max_bytes = MAX_IMAGE_BYTES
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.gpu = None  # imaging.gpu when JPEGs are decoded on the GPU
        where = params.get("decode_device", "auto")
        why = "decode_device cpu"
        if where == "auto":
            # nvidia-smi first: on a machine without a GPU, torch is never imported here.
            why = "no GPU visible (nvidia-smi)" if not gpu.visible_gpus() else None
            if why is None:
                from alexnet_server.imaging import gpu as gpu_decode

                why = gpu_decode.unavailable()
                self.gpu = None if why else gpu_decode
        device = "GPU (nvJPEG) for JPEGs, CPU for the rest" if self.gpu else f"CPU ({why})"
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: decoding on {device}, {threads} CPU thread(s)")

    def execute(self, requests):
        rows, owners = [], []
        for index, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES).as_numpy()
            for item in tensor.reshape(-1):
                rows.append(item if isinstance(item, bytes) else bytes(item))
                owners.append(index)
        results = self._decode(rows)

        per_request = [[] for _ in requests]
        for owner, result in zip(owners, results):
            per_request[owner].append(result)
        responses = []
        for results in per_request:
            errors = [f"image {i}: {err}" if len(results) > 1 else err for i, (_, err) in enumerate(results) if err]
            if errors:
                error = pb_utils.TritonError("; ".join(errors), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            images = np.stack([img for img, _ in results])
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(IMAGE, images)]))
        return responses

    def _decode(self, rows):
        """(image, None) or (None, why) per row: the GPU for the JPEGs it takes, the CPU for the rest."""
        results = [None] * len(rows)
        if self.gpu is not None:
            plans = [self.gpu.plan(data, self.max_pixels) if len(data) <= self.max_bytes else None for data in rows]
            picked = [i for i, p in enumerate(plans) if p is not None]
            try:
                decoded = self.gpu.load_batch([rows[i] for i in picked], [plans[i] for i in picked])
            except Exception as exc:  # noqa: BLE001 - a CUDA fault: this batch goes to the CPU
                pb_utils.Logger.log_warn(f"GPU decode failed ({type(exc).__name__}: {exc}); this batch is decoded on the CPU")
                decoded = [None] * len(picked)
            for i, image in zip(picked, decoded):
                if image is not None:
                    results[i] = (image, None)
        rest = [i for i, r in enumerate(results) if r is None]
        for i, result in zip(rest, self.pool.map(self._load, [rows[i] for i in rest])):
            results[i] = result
        return results

    def _load(self, data):
        """(image, None) or (None, why): never raises, so one bad image cannot fail the batch."""
        return imaging.load_or_reason(data, self.max_bytes, self.max_pixels)

    def finalize(self):
        self.pool.shutdown(wait=True)
