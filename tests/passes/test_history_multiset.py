"""The scorer reads the history as a multiset where its attention takes each distinct row once with a logit raised by
log(count); a scorer that pools the rows otherwise is refused, on ONNX Runtime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.passes.history_multiset import NotAMultiset, multiplicity_input
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import RowSpec

D = 4
ROWS = {"K": RowSpec("float32", (D,)), "V": RowSpec("float32", (D,)), "bias": RowSpec("float32", ())}


def graph(nodes, inputs, outputs) -> onnx.ModelProto:
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [value(*i) for i in inputs], [value(*o) for o in outputs]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


# the history encoder: each row's key, value and bias from the history item's own inputs
ENCODER = graph([helper.make_node("Identity", ["k_in"], ["K"]), helper.make_node("Identity", ["v_in"], ["V"]),
                 helper.make_node("Identity", ["b_in"], ["bias"])],
                [("k_in", ["L", D]), ("v_in", ["L", D]), ("b_in", ["L"])], [("K", ["L", D]), ("V", ["L", D]), ("bias", ["L"])])
SCORER_INPUTS = [("q", ["N", D]), ("K", ["L", D]), ("V", ["L", D]), ("bias", ["L"])]
# softmax(q K^T + bias) V: target attention with a key bias
ATTENTION = graph([helper.make_node("Transpose", ["K"], ["Kt"], perm=[1, 0]), helper.make_node("MatMul", ["q", "Kt"], ["s"]),
                   helper.make_node("Add", ["s", "bias"], ["logits"]), helper.make_node("Softmax", ["logits"], ["w"], axis=-1),
                   helper.make_node("MatMul", ["w", "V"], ["scores"])], SCORER_INPUTS, [("scores", ["N", D])])
# the same attention, plus the mean of the values: a mean counts every row
POOLED = graph([*ATTENTION.graph.node, helper.make_node("ReduceMean", ["V"], ["mean"], axes=[0], keepdims=1),
                helper.make_node("Add", ["scores", "mean"], ["pooled"])], SCORER_INPUTS, [("pooled", ["N", D])])


def requests(lengths=(1, 5, 40)) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"k_in": rng.normal(size=(n, D)).astype(np.float32), "v_in": rng.normal(size=(n, D)).astype(np.float32),
             "b_in": rng.normal(size=n).astype(np.float32), "q": rng.normal(size=(3, D)).astype(np.float32)} for n in lengths]


def test_attention_with_a_key_bias_takes_each_distinct_row_once():
    name, largest = multiplicity_input(ATTENTION, ROWS, ENCODER, requests(), OrtGraph)
    assert name == "bias" and largest < 1e-5


def test_the_count_really_is_the_bias_raised_by_its_log():
    """The rule the check accepts, by hand: rows [a, b, a, a] score as [a, b] with a's bias raised by log 3."""
    request = requests((2,))[0]
    scorer = OrtGraph(ATTENTION)
    every = scorer.run({"q": request["q"], "K": request["k_in"][[0, 1, 0, 0]], "V": request["v_in"][[0, 1, 0, 0]],
                        "bias": request["b_in"][[0, 1, 0, 0]]})["scores"]
    once = scorer.run({"q": request["q"], "K": request["k_in"], "V": request["v_in"],
                       "bias": request["b_in"] + np.log([3, 1]).astype(np.float32)})["scores"]
    np.testing.assert_allclose(once, every, rtol=0, atol=1e-6)
    plain = scorer.run({"q": request["q"], "K": request["k_in"], "V": request["v_in"], "bias": request["b_in"]})["scores"]
    assert np.abs(plain - every).max() > 1e-3  # without the count the answer changes


def test_a_scorer_that_pools_the_rows_is_refused():
    with pytest.raises(NotAMultiset, match="pooled differs"):
        multiplicity_input(POOLED, ROWS, ENCODER, requests(), OrtGraph)


def test_without_one_float_a_row_there_is_nothing_to_count_in():
    with pytest.raises(NotAMultiset, match="no cached output"):
        multiplicity_input(ATTENTION, {"K": ROWS["K"], "V": ROWS["V"]}, ENCODER, requests(), OrtGraph)
