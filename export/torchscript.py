"""The classifier as TorchScript (``model.pt``), for the ``pytorch`` config.

Why TorchScript: it loads without this project's code (the server imports neither train nor
export), on any PyTorch from 1.x on, and Triton's own PyTorch backend in the NGC image
(libtorch) loads the same file.  ``torch.export``/AOTInductor packages are tied to the exact
PyTorch build and, for AOTInductor, to the GPU they were compiled on; a GPU host's PyTorch is
seldom the export machine's, so a portable file wins.

The graph is the one the ONNX file holds (cast, normalise, ten crops, network, softmax,
mean), traced with the batch axis dynamic; fp32 weights.  The runtime (``runtime.engines.
pytorch``) runs it under bf16 autocast on CUDA: the convolutions and matrix products in bf16,
softmax and the average in float32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from alexnet_server import imaging
from alexnet_server.export.lrn import with_fast_lrn
from alexnet_server.train.model import CropAverage


def write(classifier: CropAverage, path: Path) -> None:
    """Trace ``classifier`` (eval mode, on the CPU) and save it to ``path``."""
    example = torch.zeros((2, 3, imaging.SIZE, imaging.SIZE), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # PyTorch 2.14 marks TorchScript deprecated; it is still the one format that loads across
        # PyTorch versions and in Triton's libtorch backend (module doc), so the notice is noise here.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(with_fast_lrn(classifier).eval(), example, check_trace=False)
    traced.save(str(path))
