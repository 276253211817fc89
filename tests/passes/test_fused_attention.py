"""The fused attention pass: which attention it rewrites, that ONNX Runtime computes the same values from the rewritten
graph (padded keys, no bias, several lengths), that no N x L tensor is left, and what it leaves alone."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.build import cut_model
from compiler.load.subject import Source, StcaSubject
from compiler.passes.fused_attention import FUSED_DOMAIN, FUSED_OP, fuse_attention
from compiler.passes.lint import lint
from compiler.stca.data import sample_requests
from compiler.stca.model import MASKED_LOGIT, with_attention
from tests.models import stca

HEADS, HEAD_SIZE = 4, 8


def attention(bias: str = "float[L] bias", elem: str = "float", weights_read: bool = False) -> onnx.ModelProto:
    """One layer of the exported kv form: per-head queries against (L, h, d) keys and values, a per-key bias (or none);
    weights_read: the attention weights p are a graph output too."""
    adds = "a = Add(s, bias)\n    p = Softmax <axis = -1> (a)" if bias else "p = Softmax <axis = -1> (s)"
    weights = f"{elem}[4, N, L] p, " if weights_read else ""
    return onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : 18]>
layer ({elem}[4, N, 8] q, {elem}[L, 4, 8] k, {elem}[L, 4, 8] v{", " + bias if bias else ""}) => ({weights}{elem}[4, N, 8] o) {{
    kt = Transpose <perm = [1, 2, 0]> (k)
    s = MatMul(q, kt)
    {adds}
    vh = Transpose <perm = [1, 0, 2]> (v)
    o = MatMul(p, vh)
}}
""")


def run(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def feeds(L: int, N: int, padded: int, seed: int, bias_shape=None) -> dict:
    rng = np.random.default_rng(seed)
    f = {"q": rng.normal(size=(HEADS, N, HEAD_SIZE)), "k": rng.normal(size=(L, HEADS, HEAD_SIZE)),
         "v": rng.normal(size=(L, HEADS, HEAD_SIZE))}
    f = {name: value.astype(np.float32) for name, value in f.items()}
    if bias_shape is not None:
        bias = np.zeros(L, np.float32)
        bias[L - padded:] = MASKED_LOGIT  # padding at the end, as a batch of short histories has it
        f["bias"] = bias.reshape(bias_shape(L))
    return f


def op_types(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("bias, bias_shape", [("float[L] bias", lambda L: (L,)), ("float[1, 1, L] bias", lambda L: (1, 1, L)),
                                              ("", None)], ids=["bias (L,)", "bias (1, 1, L)", "no bias"])
def test_one_layer_runs_as_one_multi_head_attention_and_computes_the_same(bias, bias_shape):
    layer = attention(bias)
    fused, count = fuse_attention(layer)

    assert count == 1
    kinds = op_types(fused)
    assert kinds[FUSED_OP] == 1 and kinds["Softmax"] == 0 and kinds["MatMul"] == 0
    mha = next(n for n in fused.graph.node if n.op_type == FUSED_OP)
    assert mha.domain == FUSED_DOMAIN
    assert {a.name: (a.i if a.name == "num_heads" else a.f) for a in mha.attribute} == {"num_heads": HEADS, "scale": 1.0}
    assert [o.name for o in fused.graph.output] == ["o"]  # downstream reads the same tensor
    assert len(layer.graph.node) == (6 if bias else 5)  # the caller's model is untouched

    for L, N, padded in [(1, 1, 0), (7, 3, 2), (300, 17, 0), (2000, 128, 1500)]:
        f = feeds(L, N, padded, seed=L, bias_shape=bias_shape)
        before, after = run(layer, f)[0], run(fused, f)[0]
        assert after.shape == before.shape == (HEADS, N, HEAD_SIZE)
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)  # fp32 sums over L in another order


def test_a_history_of_only_padding_keeps_the_exported_uniform_weights():
    """Every key masked: the exported graph's logits all round to MASKED_LOGIT and softmax weighs them evenly; the
    bias column reproduces that rather than a NaN."""
    layer = attention()
    f = feeds(50, 4, padded=50, seed=3, bias_shape=lambda L: (L,))
    before, after = run(layer, f)[0], run(fuse_attention(layer)[0], f)[0]
    np.testing.assert_allclose(before, f["v"].transpose(1, 0, 2).mean(1, keepdims=True).repeat(4, 1), atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", [
    attention(elem="float16"),  # ONNX Runtime's CPU kernel is fp32 only
    attention(weights_read=True),  # the weights are an output: somebody reads the N x L matrix
    attention("float[N, L] bias"),  # a bias per (candidate, key) is not one column of K
], ids=["fp16", "weights read", "bias per candidate"])
def test_what_it_cannot_rewrite_it_returns_as_it_was(model):
    assert fuse_attention(model) == (model, 0)


def scorer(attention_form: str):
    model, _ = stca("tiny")
    model = with_attention(model, attention_form)
    whole, parts = cut_model(StcaSubject(model, Source("seeded")))
    return model, whole, parts


def test_every_scorer_layer_runs_fused_on_the_stca_model_and_scores_the_same():
    model, whole, parts = scorer("kv")
    fused, count = fuse_attention(parts.scorer)

    assert count == model.config.n_layers
    assert op_types(fused)["Softmax"] == 0
    assert fuse_attention(parts.encoder)[1] == 0  # the history encoder attends to no candidate

    # No tensor is candidates x history any more: the exported scorer's (h, N, L) scores were what the pass removes
    inferred = onnx.shape_inference.infer_shapes(fused)
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    exported = onnx.shape_inference.infer_shapes(parts.scorer)
    n_by_l = [vi.name for vi in exported.graph.value_info
              if {"L", "N"} <= {d.dim_param for d in vi.type.tensor_type.shape.dim}]
    assert len(n_by_l) >= 3 * model.config.n_layers  # scores, biased scores and weights, per layer
    assert [name for name, d in dims.items() if {"L", "N"} <= set(d)] == []

    encoder = ort.InferenceSession(parts.encoder.SerializeToString(), providers=["CPUExecutionProvider"])
    for i, request in enumerate(sample_requests(model.config, [1, 37, 200], seed=5, n_candidates=9)):
        cut = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(None, {
            name: request.inputs[name] for name in (i.name for i in encoder.get_inputs())})))
        inputs = {**request.inputs, **cut}
        names = [i.name for i in parts.scorer.graph.input]
        f = {name: inputs[name] for name in names}
        before, after = run(parts.scorer, f)[0], run(fused, f)[0]
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


def test_the_reordered_form_has_no_per_head_keys_and_is_left_as_exported():
    _, _, parts = scorer("reordered")
    assert fuse_attention(parts.scorer) == (parts.scorer, 0)


def test_lint_counts_the_fused_nodes_only_where_onnx_runtime_serves_the_graph():
    fused, _ = fuse_attention(attention())

    allowed = lint(fused, "scorer", onnxruntime_ops=frozenset({(FUSED_DOMAIN, FUSED_OP)}))
    assert allowed.ok and allowed.onnxruntime_nodes == 1
    refused = lint(fused, "scorer")  # a TensorRT graph: the parser has no contrib ops
    assert not refused.ok and "custom domain 'com.microsoft'" in refused.problems[0]
