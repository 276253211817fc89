"""The TensorRT lint accepts what the builds produce and names what TensorRT's parser would refuse."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.core.errors import CompilerError
from compiler.passes.lint import check, lint
from tests.models import stca


def graph(nodes, inits, opset=18, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def qdq(zero_point=0, axis=True, dq_input_dtype=np.int8):
    scale = np.full(8, 0.1, np.float32)
    attrs = {"axis": 1} if axis else {}
    return graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)],
        {"s": scale, "z": np.full(8, zero_point, dq_input_dtype)},
    )


def test_the_exported_stca_graph_is_clean():
    _, whole = stca("tiny")
    report = lint(whole, "whole")
    assert report.ok, report.problems


def test_symmetric_per_channel_int8_qdq_is_clean():
    assert lint(qdq(), "q").ok


@pytest.mark.parametrize(
    "model, message",
    [
        (qdq(zero_point=3), "zero point is not 0"),
        (qdq(axis=False), "per-channel scale without an explicit axis"),
        (qdq(dq_input_dtype=np.uint8), "quantized type UINT8 is not INT8"),
        (graph([helper.make_node("Unique", ["x"], ["y"])], {}), "does not support Unique"),
        (graph([helper.make_node("Relu", ["x"], ["y"])], {}, opset=23), "opset 23 is outside 17..20"),
        (graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], {}, inputs=[
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8]),
            helper.make_tensor_value_info("axes", onnx.TensorProto.INT64, [1])]), "axes input 'axes' must be a constant"),
        (graph([helper.make_node("MyOp", ["x"], ["y"], domain="com.example")], {}), "custom domain"),
    ],
)
def test_what_tensorrt_would_refuse_is_named(model, message):
    problems = lint(model, "g").problems
    assert any(message in p for p in problems), problems


def test_an_int32_dequantize_is_refused():
    model = graph([helper.make_node("DequantizeLinear", ["b", "s"], ["y"])],
                  {"b": np.arange(8, dtype=np.int32), "s": np.array(0.5, np.float32)}, inputs=[])
    assert any("int32 DequantizeLinear" in p for p in lint(model, "g").problems)


def test_check_fails_the_build_with_the_graph_and_the_rule():
    with pytest.raises(CompilerError, match=r"TensorRT lint: 1 problem\(s\): bad: QuantizeLinear .*zero point is not 0"):
        check({"good": qdq(), "bad": graph([qdq(zero_point=3).graph.node[0], helper.make_node("Identity", ["q"], ["y"])],
                                           {"s": np.full(8, 0.1, np.float32), "z": np.full(8, 3, np.int8)})})
