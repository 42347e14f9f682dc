"""How an encoded image becomes AlexNet's 256x256 input, defined once.

Training, evaluation, export's checks, the Triton preprocess model and the clients all
import this module, so there is no train/serve skew.  It depends on Pillow and numpy
only: a client install and the preprocess model do not pull PyTorch in.

The geometry is the paper's [2, 4.1]: shorter side to 256, centre 256x256 crop; the
network sees 224x224 crops of that (random during training; the four corners, the
centre and their mirrors at test time).
"""

from alexnet_server.imaging.pipeline import (
    BACKGROUND,
    CENTRE,
    CROP,
    FORMAT_NAMES,
    FORMATS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_DECODE_BYTES,
    MAX_PIXELS,
    SIZE,
    EncodedImage,
    ImageError,
    centre_box,
    crop_offsets,
    decode,
    from_array,
    load,
    load_or_reason,
    orientation,
    sniff,
    ten_crop_boxes,
    to_rgb,
)
from alexnet_server.imaging.samples import sample_photographs

__all__ = [
    "BACKGROUND",
    "CENTRE",
    "CROP",
    "FORMAT_NAMES",
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_DECODE_BYTES",
    "MAX_PIXELS",
    "SIZE",
    "EncodedImage",
    "ImageError",
    "centre_box",
    "crop_offsets",
    "decode",
    "from_array",
    "load",
    "load_or_reason",
    "orientation",
    "sample_photographs",
    "sniff",
    "ten_crop_boxes",
    "to_rgb",
]
