"""The ONNX classifier: uint8 IMAGE [N,3,256,256] -> float32 PROBS [N,C], crops inside the graph."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch

from alexnet_server import contract
from alexnet_server import imaging
from alexnet_server.export.lrn import ChannelWindowLRN, with_fast_lrn  # noqa: F401 - ChannelWindowLRN is part of what the graph holds
from alexnet_server.train.model import CropAverage

INPUT, OUTPUT = contract.IMAGE, contract.PROBS  # the contract between export, Triton's configs and the clients
OPSET = 18  # the dynamo exporter's native opset; the ONNX Runtime, OpenVINO and TensorRT 10 the extras install take it
MAX_DYNAMIC_BATCH = 4096


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
