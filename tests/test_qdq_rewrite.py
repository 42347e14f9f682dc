"""The INT8 graph rewrites on small hand-built QDQ graphs, run by ONNX Runtime before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from alexnet_server.export import qdq_rewrite


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _consts(**arrays) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.asarray(v), k) for k, v in arrays.items()]


def _crop_graph(extra_output: bool = False) -> onnx.ModelProto:
    """x float [N,3,8,8] -> two 6x6 crops and a mirror -> stack -> reshape -> Q -> DQ."""
    i64 = lambda *v: np.array(v, np.int64)
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["a"]),  # top-left 6x6
        helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["b"]),  # bottom-right 6x6
        helper.make_node("Slice", ["a", "fs", "fe", "fa", "fst"], ["a_flip"]),  # mirror
        helper.make_node("Unsqueeze", ["a", "one"], ["ua"]),
        helper.make_node("Unsqueeze", ["b", "one"], ["ub"]),
        helper.make_node("Unsqueeze", ["a_flip", "one"], ["uf"]),
        helper.make_node("Concat", ["ua", "ub", "uf"], ["stack"], axis=1),
        helper.make_node("Reshape", ["stack", "shape"], ["view"]),
        helper.make_node("QuantizeLinear", ["view", "scale", "zp"], ["view_q"]),
        helper.make_node("DequantizeLinear", ["view_q", "scale", "zp"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 6, 6])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 3, 6, 6]))
    inits = _consts(
        s0=i64(0, 0), e0=i64(6, 6), s1=i64(2, 2), e1=i64(8, 8), ax=i64(2, 3),
        fs=i64(-1), fe=i64(-(2**62)), fa=i64(3), fst=i64(-1), one=i64(1), shape=i64(-1, 3, 6, 6),
        scale=np.float32(0.05), zp=np.uint8(100),
    )  # fmt: skip
    graph = helper.make_graph(nodes, "crops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_crops_on_uint8_is_bit_identical():
    model = _crop_graph()
    x = np.random.default_rng(0).normal(0, 3, (2, 3, 8, 8)).astype(np.float32)
    before = _run(model, {"x": x})
    assert qdq_rewrite.crops_on_uint8(model) == 1
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_run(model, {"x": x}), before)
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("QuantizeLinear") < ops.index("Slice"), "the crops should now run on uint8"


def test_crops_on_uint8_leaves_shared_tensors_alone():
    """A crop that something else also reads must stay float: nothing is rewritten."""
    model = _crop_graph(extra_output=True)
    assert qdq_rewrite.crops_on_uint8(model) == 0


def _lrn_tail_graph(form: str) -> onnx.ModelProto:
    """x_q -> DQ -> x;  x / (x + 2)**0.75 via Sqrt  -> MaxPool -> Q -> DQ: the shape of LRN's end,
    as a division by m or a product with a factor 1/m computed in float."""
    nodes = [
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x"]),
        helper.make_node("Add", ["x", "k"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["r1"]),
        helper.make_node("Sqrt", ["r1"], ["r2"]),
        helper.make_node("Mul", ["r1", "r2"], ["m"]),
        *(
            [helper.make_node("Div", ["x", "m"], ["b"])]
            if form == "div"
            else [helper.make_node("Reciprocal", ["m"], ["f"]), helper.make_node("Mul", ["f", "x"], ["b"])]
        ),
        helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("QuantizeLinear", ["p", "ys", "yz"], ["p_q"]),
        helper.make_node("DequantizeLinear", ["p_q", "ys", "yz"], ["y"]),
    ]
    inits = _consts(xs=np.float32(0.1), xz=np.uint8(0), k=np.float32(2.0), ys=np.float32(0.04), yz=np.uint8(0))
    graph = helper.make_graph(
        nodes, "lrn_tail", [helper.make_tensor_value_info("x_q", TensorProto.UINT8, [None, 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 4, 4])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("form", ["div", "mul"])
def test_float_factors_become_quantized_products(tmp_path, form):
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (16, 4, 9, 9), dtype=np.uint8)
    x = rng.integers(0, 256, (3, 4, 9, 9), dtype=np.uint8)
    model = _lrn_tail_graph(form)
    before = _run(model, {"x_q": x})
    assert qdq_rewrite.factors_on_uint8(model, calibration) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "Div" not in ops and ops.count("QuantizeLinear") == 3  # the factor, the product, the output
    after = _run(model, {"x_q": x})
    # 1/m on 255 levels of [0, max]: within a level or two of the output's own 0.04 step.
    assert np.abs(after - before).max() <= 2 * 0.04 + 1e-6
    assert (np.abs(after - before) < 1e-6).mean() > 0.5
    # ONNX Runtime then runs the product as one integer kernel.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    fused = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(fused.run(None, {"x_q": x})[0], after, atol=0.04 + 1e-6)
    assert "QLinearMul" in [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_factor_that_goes_negative_is_left_alone():
    """[0, max] cannot hold a factor that is negative or NaN on a calibration image: no rewrite."""
    model = _lrn_tail_graph("mul")
    for init in model.graph.initializer:
        if init.name == "k":
            init.CopyFrom(numpy_helper.from_array(np.float32(-2.0), "k"))  # m = (x - 2)**0.75: NaN below x = 2
    calibration = np.random.default_rng(1).integers(0, 256, (8, 4, 9, 9), dtype=np.uint8)
    assert qdq_rewrite.factors_on_uint8(model, calibration) == 0
    assert "Reciprocal" in [n.op_type for n in model.graph.node] and "QuantizeLinear" in [n.op_type for n in model.graph.node]
