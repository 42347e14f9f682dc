"""Rewrites of the quantized (QDQ) classifier that ONNX Runtime's quantizer does not make.

Each one is chosen by profiling the INT8 model on a CPU and each is checked by a test.

- ``crops_on_uint8``: the 10 crops (slices, mirrors, the stack) are pure data movement, so
  quantizing their source once gives bit-identical uint8 crops to quantizing the stacked
  float crops, with a quarter of the memory traffic (float crops were ~9% of the INT8 run).
- ``factors_on_uint8``: LRN ends in ``x * r`` (or ``x / m``) between a dequantized ``x``
  and a requantized result, a float island ONNX Runtime has no integer kernel for.  With
  the factor quantized (its range calibrated on the calibration images), ONNX Runtime runs
  it as one QLinearMul on uint8 data: no dequantize of ``x``, no float product, no
  requantize.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA_MOVEMENT = {"Slice", "Unsqueeze", "Concat", "Reshape"}  # elementwise-free: commute with Q


def crops_on_uint8(model: onnx.ModelProto) -> int:
    """Move each QuantizeLinear that follows pure data movement up to that movement's single
    float source (one computed in float, not a dequantized tensor).  Returns how many moved."""
    graph = model.graph
    nodes = list(graph.node)
    producer, consumers = _index(nodes)
    moved, new_q, retyped = set(), {}, set()  # old QuantizeLinear ids; source -> its new QuantizeLinear
    for quant in [n for n in nodes if n.op_type == "QuantizeLinear"]:
        region = _movement_region(quant.input[0], producer, consumers, {o.name for o in graph.output})
        if region is None:
            continue
        movers, source = region
        if source in producer and producer[source].op_type == "DequantizeLinear":
            continue  # already quantized upstream: ONNX Runtime drops that DQ/Q pair itself
        source_q = f"{source}_quantized_for_crops"
        for node in movers:
            for i, name in enumerate(node.input):
                if name == source:
                    node.input[i] = source_q
        # The last movement node now yields the uint8 tensor the old QuantizeLinear did.
        producer[quant.input[0]].output[0] = quant.output[0]
        moved.add(id(quant))
        new_q[source] = helper.make_node("QuantizeLinear", [source, *quant.input[1:]], [source_q], name=f"{quant.name}_before_crops")
        retyped |= {out for node in movers for out in node.output}
    if moved:
        # Each new QuantizeLinear goes right after its source's producer (or first, for a
        # graph input), so the node order stays topological.
        rewritten = [new_q[i.name] for i in graph.input if i.name in new_q]
        for node in nodes:
            if id(node) not in moved:
                rewritten += [node, *(new_q[out] for out in node.output if out in new_q)]
        _drop_value_info(graph, retyped)
        del graph.node[:]
        graph.node.extend(rewritten)
    return len(moved)


def factors_on_uint8(model: onnx.ModelProto, calibration: np.ndarray) -> int:
    """Rewrite ``Q(DQ(x_q) * f)`` and ``Q(DQ(x_q) / m)``, with f or m computed in float, as
    ``Q(DQ(x_q) * DQ(Q(f or 1/m)))``, the factor's range [0, max] calibrated on ``calibration``
    by the model itself.  ONNX Runtime fuses the result into one QLinearMul.  Factors that
    go negative (or divisors that reach 0) on the calibration images are left alone.
    Returns how many were rewritten."""
    graph = model.graph
    candidates = _factor_candidates(graph)
    if not candidates:
        return 0
    ranges = _ranges(model, [c[2] for c in candidates], calibration)
    extra_inits, replaced = [], {}
    for (node, x, source, quant), (low, high) in zip(candidates, ranges):
        reciprocal = node.op_type == "Div"
        largest = (1 / low if low > 0 else np.inf) if reciprocal else (high if low >= 0 else np.inf)
        if not np.isfinite(largest) or largest <= 0:
            continue
        inits, new_nodes = _quantized_product(node, x, source, quant, largest, reciprocal)
        extra_inits += inits
        replaced[id(node)] = new_nodes
    rewritten = [new for node in graph.node for new in replaced.get(id(node), [node])]
    graph.initializer.extend(extra_inits)
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(replaced)


def _factor_candidates(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, str, str, onnx.NodeProto]]:
    """(Mul or Div node, its dequantized input x, its float factor's name, the QuantizeLinear after it)."""
    producer, consumers = _index(graph.node)

    def computed_in_float(name: str) -> bool:
        return name in producer and producer[name].op_type not in ("DequantizeLinear", "Constant")

    def dequantized(name: str) -> bool:
        return getattr(producer.get(name), "op_type", None) == "DequantizeLinear"

    candidates = []
    for node in graph.node:
        if node.op_type == "Div" and dequantized(node.input[0]) and computed_in_float(node.input[1]):
            x, source = node.input
        elif node.op_type == "Mul" and dequantized(node.input[0]) != dequantized(node.input[1]):
            x, source = node.input if dequantized(node.input[0]) else node.input[::-1]
            if not computed_in_float(source):
                continue
        else:
            continue
        quant = _requantized_through_pooling(node.output[0], consumers)
        if quant is not None:
            candidates.append((node, x, source, quant))
    return candidates


def _quantized_product(node, x: str, source: str, quant, largest: float, reciprocal: bool) -> tuple[list, list]:
    """(initializers, nodes) replacing ``node``: the factor (or 1/divisor) quantized on [0, largest],
    multiplied with x; requantized with ``quant``'s parameters when max-pooling sits between."""
    p = f"{node.name}_factor"
    inits = [numpy_helper.from_array(np.array(largest / 255, np.float32), p + "_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), p + "_zero_point")]  # fmt: skip
    q_args = [p + "_scale", p + "_zero_point"]
    factor, nodes = source, []
    if reciprocal:
        factor = p
        nodes.append(helper.make_node("Reciprocal", [source], [p], name=p + "_Reciprocal"))
    nodes += [
        helper.make_node("QuantizeLinear", [factor, *q_args], [p + "_quantized"], name=p + "_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [p + "_quantized", *q_args], [p + "_dequantized"], name=p + "_DequantizeLinear"),
    ]
    if quant.input[0] == node.output[0]:
        nodes.append(helper.make_node("Mul", [x, p + "_dequantized"], [node.output[0]], name=f"{node.name}_on_uint8"))
    else:  # max-pooling in between commutes with quantization: requantize the product itself
        q_out = quant.input[1:]
        nodes += [
            helper.make_node("Mul", [x, p + "_dequantized"], [p + "_product"], name=f"{node.name}_on_uint8"),
            helper.make_node("QuantizeLinear", [p + "_product", *q_out], [p + "_product_quantized"], name=p + "_product_Q"),
            helper.make_node("DequantizeLinear", [p + "_product_quantized", *q_out], [node.output[0]], name=p + "_product_DQ"),
        ]
    return inits, nodes


def _index(nodes) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Each tensor's producing node and its consuming nodes."""
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _requantized_through_pooling(name: str, consumers) -> onnx.NodeProto | None:
    """The QuantizeLinear that ``name`` reaches directly or through MaxPool nodes alone."""
    users = consumers.get(name, [])
    if len(users) != 1:
        return None
    if users[0].op_type == "QuantizeLinear":
        return users[0]
    if users[0].op_type == "MaxPool":
        return _requantized_through_pooling(users[0].output[0], consumers)
    return None


def _ranges(model: onnx.ModelProto, names: list[str], images: np.ndarray) -> list[tuple[float, float]]:
    """(min, max) of each tensor over ``images``, computed by the quantized model itself."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    low, high = np.full(len(names), np.inf), np.full(len(names), -np.inf)
    for batch in np.array_split(images, max(1, len(images) // 8)):
        values = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(batch)})
        low = np.minimum(low, [float(v.min()) for v in values])
        high = np.maximum(high, [float(v.max()) for v in values])
    return list(zip(low.tolist(), high.tolist()))


def _movement_region(start: str, producer, consumers, graph_outputs: set[str]) -> tuple[list[onnx.NodeProto], str] | None:
    """The data-movement nodes that compute ``start`` from one non-constant tensor, if every
    tensor inside the region is used only inside it (nothing else sees it change type)."""
    nodes, sources, stack, seen = [], set(), [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or node.op_type not in DATA_MOVEMENT:
            sources.add(name)
            continue
        nodes.append(node)
        # Only the data input moves; the rest (starts, ends, axes, shape) are constants.
        data_inputs = node.input if node.op_type == "Concat" else node.input[:1]
        stack.extend(data_inputs)
    if not nodes or len(sources) != 1:
        return None
    inside = {id(node) for node in nodes}
    for node in nodes:
        for out in node.output:
            if out != start and (out in graph_outputs or any(id(c) not in inside for c in consumers.get(out, []))):
                return None
    return nodes, sources.pop()


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    """Recorded types of tensors that changed from float to uint8 would mislead the runtime."""
    keep = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)
