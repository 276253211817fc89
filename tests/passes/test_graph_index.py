"""The one graph index partition, precision and lint ask: weights are weights behind any layout op."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.passes.graph_index import LAYOUT_OPS, GraphIndex
from compiler.precision.convert import attention_matmuls


def matmul_behind(op: str) -> onnx.ModelProto:
    """y = x @ op(w) with w an initializer, and s = x @ x^T (two activations)."""
    w = numpy_helper.from_array(np.ones((1, 4, 4), np.float32) if op == "Squeeze" else np.ones((4, 4), np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    layout = helper.make_node(op, ["w", "axes"] if op == "Squeeze" else ["w"], ["w_laid"], name="layout",
                              **({"perm": [1, 0]} if op == "Transpose" else {}))
    nodes = [layout, helper.make_node("MatMul", ["x", "w_laid"], ["y"], name="by_weight"),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0], name="xt"),
             helper.make_node("MatMul", ["x", "xt"], ["s"], name="by_activation")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 3])], initializer=[w, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op", ["Identity", "Squeeze", "Transpose"])
def test_a_weight_behind_a_layout_op_is_a_weight_not_an_attention_operand(op):
    assert op in LAYOUT_OPS
    model = matmul_behind(op)
    onnx.checker.check_model(model, full_check=True)
    index = GraphIndex(model.graph)
    assert index.is_weight("w_laid") and not index.is_weight("xt")
    assert attention_matmuls(model) == ["by_activation"]


def test_constants_from_initializers_and_constant_nodes_with_their_types():
    value = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([2, 3], np.int8)))
    graph = helper.make_graph([value, helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["L", 4])],
                              initializer=[numpy_helper.from_array(np.zeros(3, np.float16), "h")])
    index = GraphIndex(graph)
    np.testing.assert_array_equal(index.constant("c"), [2, 3])
    assert index.elem_type("c") == TensorProto.INT8 and index.dtype("h") == "float16"
    assert index.constant("x") is None and not index.is_constant("x")
    assert index.shape("x") == ("L", 4) and index.producer["y"].op_type == "Identity"
    assert [n.op_type for n in index.consumers["x"]] == ["Identity"]
