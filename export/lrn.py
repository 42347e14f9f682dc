"""The paper's LRN in the form the exported files carry (ONNX and TorchScript alike)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from alexnet_server.train.model import CropAverage


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
