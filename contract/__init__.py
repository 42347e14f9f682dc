"""What the stages share, and nothing else: torch-free, numpy-free, stdlib only.

The stages (train, export, server, clients) import this package and ``imaging`` instead of
each other.  It holds the names Triton, the ONNX graph and the clients agree on, the model
repository's layout and versions, one atomic file write, and the CPU description every
benchmark prints.
"""

# Tensor and model names: the contract between the ONNX graph, Triton's configs and the clients.
IMAGE_BYTES = "IMAGE_BYTES"  # TYPE_STRING [1]: one encoded image per batch row (preprocess, classify)
IMAGE = "IMAGE"  # TYPE_UINT8 [3,256,256]: the decoded, resized, centre-cropped image (imaging.load)
PROBS = "PROBS"  # TYPE_FP32 [C]: softmax averaged over the crops [4.1]

PREPROCESS = "preprocess"  # python backend: IMAGE_BYTES -> IMAGE
MODEL = "alexnet"  # IMAGE -> PROBS, its runtime chosen by --model-config-name
ENSEMBLE = "classify"  # IMAGE_BYTES -> preprocess -> alexnet -> PROBS

__all__ = ["ENSEMBLE", "IMAGE", "IMAGE_BYTES", "MODEL", "PREPROCESS", "PROBS"]
