"""The partition pass: automatic, general, checked; encoder + scorer composed equal the whole model."""

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.core.contract import REQUEST_INPUTS
from compiler.core.errors import CompilerError
from compiler.passes.partition import split
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.stca.data import sample_requests
from tests.models import din_model, shape_read_model, stca, two_tower_model


def assert_composed_equal(model, parts, feeds_list, atol=1e-5):
    whole = OrtGraph(model)
    runner = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    for feeds in feeds_list:
        expected = whole.run(feeds)["scores"]
        np.testing.assert_allclose(runner.score(feeds), expected, rtol=0, atol=atol)


@pytest.fixture(scope="module", params=["kv", "reordered"])
def stca_split(request):
    model, graph = stca("tiny", attention=request.param)
    return model, graph, split(graph, REQUEST_INPUTS, model.cut_tensor_names())


def test_stca_cut_holds_per_request_tensors_named_after_the_paper(stca_split):
    model, _, parts = stca_split
    M = model.config.n_layers
    names = [t.name for t in parts.cut.tensors]
    if model.config.attention == "kv":  # K and V are target-independent: computed once per request
        assert names == ["key_bias", "user_tokens"] + [f"{kv}_{i}" for i in range(1, M + 1) for kv in "KV"]
    else:  # reordered never materialises K/V: only Xt crosses
        assert names == ["key_bias", "user_tokens"] + [f"Xt_{i}" for i in range(1, M + 1)]


def test_stca_cut_bytes_match_the_model_equations(stca_split):
    model, _, parts = stca_split
    c, L = model.config, 10_000
    per_layer = 2 if c.attention == "kv" else 1  # (K, V) or Xt, each (L, D) fp32
    expected = 4 * (per_layer * c.n_layers * L * c.d_model + L + c.n_user_fields * c.d_model)  # + key_bias + user tokens
    assert parts.cut.bytes_per_request({"L": L}) == expected


def test_stca_encoder_takes_only_request_inputs_and_shares_the_item_table(stca_split):
    _, _, parts = stca_split
    assert {i.name for i in parts.encoder.graph.input} == set(REQUEST_INPUTS)
    assert {i.name for i in parts.scorer.graph.input} >= {"candidate_item_ids", "candidate_features"}
    assert [w.name for w in parts.cut.shared_weights] == ["item_embedding.weight"]
    for half in (parts.encoder, parts.scorer):
        onnx.checker.check_model(half, full_check=True)


@pytest.mark.parametrize("L,N", [(1, 1), (7, 3), (512, 256)])
def test_stca_encoder_and_scorer_compose_to_the_whole_model(stca_split, L, N):
    model, graph, parts = stca_split
    requests = [r.inputs for r in sample_requests(model.config, [L], seed=L + N, n_candidates=N)]
    assert_composed_equal(graph, parts, requests)


def test_split_does_not_touch_the_callers_model():
    _, graph = stca("tiny")
    before = graph.SerializeToString()
    split(graph, REQUEST_INPUTS)
    assert graph.SerializeToString() == before


def test_din_style_model_splits_at_its_projected_history():
    graph, request_inputs = din_model()
    parts = split(graph, request_inputs)
    assert [(t.dtype, t.shape) for t in parts.cut.tensors] == [("float32", ("L", 8))]
    assert [w.name for w in parts.cut.shared_weights] == ["embedding.weight"]
    rng = np.random.default_rng(0)
    feeds = [{"history_item_ids": rng.integers(1, 500, L), "candidate_item_ids": rng.integers(1, 500, N)} for L, N in ((1, 1), (30, 4), (900, 64))]
    assert_composed_equal(graph, parts, feeds)


def test_two_tower_model_ships_only_the_user_vector():
    graph, request_inputs = two_tower_model()
    parts = split(graph, request_inputs)
    assert [(t.dtype, t.shape) for t in parts.cut.tensors] == [("float32", (8,))]
    assert {i.name for i in parts.encoder.graph.input} == {"user_ids", "history_item_ids"}
    rng = np.random.default_rng(1)
    feeds = [{"user_ids": rng.integers(0, 500, 3), "history_item_ids": rng.integers(1, 500, L), "candidate_item_ids": rng.integers(1, 500, N)}
             for L, N in ((2, 1), (50, 9))]
    assert_composed_equal(graph, parts, feeds)


def test_a_shape_only_read_is_recomputed_on_the_scorer_side_not_shipped():
    graph, request_inputs = shape_read_model(scorer_sees_length=True)
    parts = split(graph, request_inputs)
    assert [t.name for t in parts.cut.tensors] == ["hist_emb"]  # L comes from Shape(hist_emb), not from history
    assert "history" not in {i.name for i in parts.scorer.graph.input}
    assert parts.cut.placement["length"] == "shape-only: the shape of 'history', recomputed on the scorer side from ['hist_emb']"
    feeds = [{"history": np.arange(1, L + 1, dtype=np.int64), "cand": np.linspace(0, 1, 5, dtype=np.float32)} for L in (1, 13)]
    assert_composed_equal(graph, parts, feeds, atol=1e-4)


def test_a_shape_no_scorer_tensor_carries_is_shipped_and_reported():
    graph, request_inputs = shape_read_model(scorer_sees_length=False)
    parts = split(graph, request_inputs)
    shipped = {t.name: (t.dtype, t.shape) for t in parts.cut.tensors}
    assert shipped == {"length": ("int64", (1,)), "total": ("float32", ())}
    assert any(r.startswith("shape shipped") for r in parts.cut.placement.values())
    feeds = [{"history": np.arange(1, 12, dtype=np.int64), "cand": np.ones(3, np.float32)}]
    assert_composed_equal(graph, parts, feeds, atol=1e-4)


def test_bad_request_inputs_are_named():
    _, graph = stca("tiny")
    with pytest.raises(CompilerError, match=r"request input\(s\) \['history_ids'\] are not inputs"):
        split(graph, {"history_ids"})
    with pytest.raises(CompilerError, match="every input is request-level"):
        split(graph, {i.name for i in graph.graph.input})


def test_toposort_orders_a_long_shuffled_chain_and_refuses_a_cycle():
    import random

    from compiler.passes.partition import _toposort

    chain = [helper.make_node("Relu", [f"v{k}"], [f"v{k + 1}"], name=f"n{k}") for k in range(3_000)]
    shuffled = chain[:]
    random.Random(0).shuffle(shuffled)
    assert [n.name for n in _toposort(shuffled, {"v0"})] == [n.name for n in chain]
    loop = [helper.make_node("Relu", ["b"], ["a"], name="x"), helper.make_node("Relu", ["a"], ["b"], name="y")]
    with pytest.raises(RuntimeError, match="cycle between nodes"):
        _toposort(loop, set())


def test_a_weight_also_listed_as_a_graph_input_stays_a_weight():
    model, request = shape_read_model(scorer_sees_length=False)
    model.graph.input.append(helper.make_tensor_value_info("w_row", onnx.TensorProto.FLOAT, [1, 4]))  # IR<4 style
    parts = split(model, request)
    assert "w_row" not in {i.name for i in parts.encoder.graph.input} | {i.name for i in parts.scorer.graph.input}
    assert len(parts.encoder.graph.node) > 0 and parts.cut.candidate_inputs == ("cand",)
    feeds = {"history": np.arange(1, 6, dtype=np.int64), "cand": np.array([0.5, 2.0], np.float32)}
    split_scores = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer)).score(feeds)
    whole, _ = shape_read_model(scorer_sees_length=False)
    np.testing.assert_allclose(split_scores, OrtGraph(whole).run(feeds)["scores"], rtol=1e-6)


def history_and_candidate_model(nodes, history: tuple, **model_fields) -> onnx.ModelProto:
    """A hand-made graph of inputs history (dtype, dim) and cand FLOAT [N], output scores [N, 1], and an
    int64 `axis` initializer [1] for the final Unsqueeze."""
    graph = helper.make_graph(
        nodes, "hand_made",
        [helper.make_tensor_value_info("history", history[0], [history[1]]),
         helper.make_tensor_value_info("cand", onnx.TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 1])],
        initializer=[onnx.numpy_helper.from_array(np.array([1], np.int64), "axis")])
    return helper.make_model(graph, **{"opset_imports": [helper.make_opsetid("", 18)], **model_fields})


def test_a_model_with_no_request_only_work_is_refused_by_name():
    nodes = [helper.make_node("Mul", ["history", "cand"], ["prod"]), helper.make_node("Unsqueeze", ["prod", "axis"], ["scores"])]
    model = history_and_candidate_model(nodes, (onnx.TensorProto.FLOAT, "N"))
    with pytest.raises(CompilerError, match=r"nothing computes from the request-level inputs \['history'\] alone"):
        split(model, {"history"})


def test_rebuilt_shape_values_never_take_a_name_the_graph_already_uses():
    model, request = shape_read_model(scorer_sees_length=True)
    for node in model.graph.node:  # the graph already holds a value called what the rebuilt dim would be
        node.input[:] = ["length__dim0" if v == "hist_f" else v for v in node.input]
        node.output[:] = ["length__dim0" if v == "hist_f" else v for v in node.output]
    del model.graph.value_info[:]
    parts = split(model, request)
    feeds = {"history": np.arange(1, 8, dtype=np.int64), "cand": np.array([0.5, 2.0, -1.0], np.float32)}
    np.testing.assert_allclose(SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer)).score(feeds),
                               OrtGraph(model).run(feeds)["scores"], rtol=1e-6)


def test_a_node_reading_an_undefined_value_is_refused_by_name():
    model, request = shape_read_model(scorer_sees_length=False)
    model.graph.node[0].input[0] = "histroy"  # a typo: defined nowhere
    with pytest.raises(CompilerError, match=r"reads \['histroy'\], which no node, input or initializer"):
        split(model, request)


def test_a_half_carries_the_model_functions_it_calls_matched_by_domain_and_name():
    double = lambda domain: helper.make_function(domain, "Double", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],  # noqa: E731
                                                 [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Cast", ["history"], ["hist_f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["hist_f"], ["total"], keepdims=0),
             helper.make_node("Double", ["cand"], ["cand2"], domain="ours"),
             helper.make_node("Mul", ["cand2", "total"], ["prod"]),
             helper.make_node("Unsqueeze", ["prod", "axis"], ["scores"])]
    model = history_and_candidate_model(nodes, (onnx.TensorProto.INT64, "L"), functions=[double("ours"), double("theirs")],
                                        opset_imports=[helper.make_opsetid(d, v) for d, v in (("", 18), ("ours", 1), ("theirs", 1))])
    parts = split(model, {"history"})
    assert [(f.domain, f.name) for f in parts.scorer.functions] == [("ours", "Double")]
    assert not parts.encoder.functions
