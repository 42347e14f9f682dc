"""The ONNX classifier: uint8 IMAGE [N,3,256,256] -> float32 PROBS [N,C], crops inside the graph."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

import imaging
from train.transforms import CropAverage

INPUT, OUTPUT = "IMAGE", "PROBS"  # the contract between export, Triton's configs and the clients
OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime >= 1.14 and TensorRT >= 8.6 take it
MAX_DYNAMIC_BATCH = 4096


class ChannelWindowLRN(nn.Module):
    """The paper's LRN [3.3] with its sum over n adjacent channels written as a 1x1
    convolution by a fixed banded matrix: b = a / d**beta, d = k + alpha/n * band @ a**2.

    Same numbers as ``nn.LocalResponseNorm`` (tested), different ONNX, chosen by profiling
    ONNX Runtime on this CPU (10-crop model, batch 8):
    - PyTorch exports its LRN as Pow/AveragePool3d/Mul nodes (~25% of a float run, and a
      float island in the INT8 graph); ONNX's own LRN node is slower still (57% of a run).
      A convolution is what ONNX Runtime runs fastest, in float and in int8.
    - alpha/n sits in the band's weights and k in its bias: two passes over the largest
      activations of the network fewer.  (Where the INT8 bias would overflow int32,
      ONNX Runtime's quantizer coarsens the weight scale instead.)
    - d**-0.75 as 1/(sqrt(d) * sqrt(sqrt(d))): ONNX Runtime's Pow is a scalar loop that
      took 23% of the INT8 run; Sqrt is vectorised.  Other betas keep Pow.
    """

    def __init__(self, lrn: nn.LocalResponseNorm, channels: int) -> None:
        super().__init__()
        i = torch.arange(channels)
        offset = i[None, :] - i[:, None]  # [out, in]: in - out
        band = (offset >= -(lrn.size // 2)) & (offset <= (lrn.size - 1) // 2)  # PyTorch's window
        self.register_buffer("weight", band.float()[:, :, None, None] * (lrn.alpha / lrn.size))
        self.register_buffer("bias", torch.full((channels,), float(lrn.k)))
        self.beta = lrn.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = F.conv2d(x * x, self.weight, self.bias)
        if self.beta == 0.75:
            root = torch.sqrt(d)
            return x / (root * torch.sqrt(root))
        return x / d**self.beta


def with_fast_lrn(classifier: CropAverage) -> CropAverage:
    """A copy of ``classifier`` whose LRN layers are ChannelWindowLRN (the original is untouched)."""
    features = getattr(classifier.net, "features", None)
    if features is None or not any(isinstance(m, nn.LocalResponseNorm) for m in features):
        return classifier
    clone = copy.deepcopy(classifier)
    channels = None
    for index, layer in enumerate(clone.net.features):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.LocalResponseNorm):
            clone.net.features[index] = ChannelWindowLRN(layer, channels)
    return clone


def write(classifier: CropAverage, path: Path, num_classes: int, metadata: dict[str, str]) -> onnx.ModelProto:
    """Export ``classifier`` (N dynamic), check it with onnx.checker, stamp metadata, save to ``path``."""
    example = torch.zeros((2, 3, imaging.SIZE, imaging.SIZE), dtype=torch.uint8)
    batch = torch.export.Dim("N", min=1, max=MAX_DYNAMIC_BATCH)
    chatter = io.StringIO()
    # The exporter narrates each step on stdout; keep the CLI's output to what users need.
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            with_fast_lrn(classifier).eval(),
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model, full_check=True)
    _check_signature(model, num_classes)
    onnx.save_model(model, str(path))
    return model


def _check_signature(model: onnx.ModelProto, num_classes: int) -> None:
    (inp,), (out,) = model.graph.input, model.graph.output
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    problems = []
    if inp.name != INPUT or inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8 or in_dims[1:] != [3, imaging.SIZE, imaging.SIZE]:
        problems.append(f"input is {inp.name} {in_dims}")
    if out.name != OUTPUT or out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or out_dims[1:] != [num_classes]:
        problems.append(f"output is {out.name} {out_dims}")
    if not isinstance(in_dims[0], str) or not isinstance(out_dims[0], str):
        problems.append("the batch axis is not dynamic")
    if problems:
        raise RuntimeError("exported graph breaks the contract: " + "; ".join(problems))
