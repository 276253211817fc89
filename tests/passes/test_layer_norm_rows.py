"""The layer-norm rows pass: what it rewrites, what it leaves, that ONNX Runtime then fuses no
SkipLayerNormalization, and that the numbers do not change."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.build import cut_model
from compiler.load.subject import Source, StcaSubject
from compiler.passes.layer_norm_rows import layer_norms_on_rows
from compiler.stca.data import sample_requests
from tests.models import stca
from tests.ort_optimized import optimized

NORMS = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 18]>
norms (float[N, 8, 16] a, float[N, 8, 16] b, float[N, 16] c, float[N, 16] d) => (float[N, 8, 16] summed_3d,
                                                                             float[N, 16] summed_2d,
                                                                             float[N, 8, 16] over_two_axes,
                                                                             float[N, 8, 16] of_a_product) {
    scale = Constant <value = float[16] {1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5}> ()
    bias = Constant <value = float[16] {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5}> ()
    normalized_shape = Constant <value = int64[2] {8, 16}> ()
    scale_2 = ConstantOfShape <value = float[1] {1.5}> (normalized_shape)
    s3 = Add(a, b)
    summed_3d = LayerNormalization <axis = -1, epsilon = 0.001> (s3, scale, bias)
    s2 = Add(c, d)
    summed_2d = LayerNormalization <axis = -1> (s2, scale, bias)
    s3_again = Add(b, a)
    over_two_axes = LayerNormalization <axis = 1> (s3_again, scale_2)
    p = Mul(a, b)
    of_a_product = LayerNormalization <axis = -1> (p, scale, bias)
}
""")


def optimized_op_types(model: onnx.ModelProto, tmp_path) -> Counter:
    return Counter(n.op_type for n in optimized(model, tmp_path / "optimized.onnx").graph.node)


def run(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_only_a_last_axis_norm_of_a_3d_sum_moves_to_rows_and_computes_the_same(tmp_path):
    rewritten, count = layer_norms_on_rows(NORMS)

    assert count == 1
    norms = [n for n in rewritten.graph.node if n.op_type == "LayerNormalization"]
    assert [n.input[0] for n in norms] == ["summed_3d__rows", "s2", "s3_again", "p"]  # the 2-D sum, axis 1 and a Mul: as they were
    epsilon = next(a.f for a in norms[0].attribute if a.name == "epsilon")
    assert epsilon == pytest.approx(0.001)  # the norm's own attributes travel with it
    onnx.checker.check_model(rewritten, full_check=True)
    assert len(NORMS.graph.node) == 12  # the caller's model is untouched

    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(size=(5, 8, 16)), "b": rng.normal(size=(5, 8, 16)), "c": rng.normal(size=(5, 16)),
             "d": rng.normal(size=(5, 16))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    for before, after in zip(run(NORMS, feeds), run(rewritten, feeds)):
        assert after.shape == before.shape
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)

    assert optimized_op_types(NORMS, tmp_path)["SkipLayerNormalization"] == 1  # what the pass is for
    assert optimized_op_types(rewritten, tmp_path)["SkipLayerNormalization"] == 0


def test_the_stca_graphs_served_by_onnx_runtime_hold_no_skip_layer_norm(tmp_path):
    """RankMixer's two residual norms per block are the pattern; after export no half, nor the whole graph, fuses it."""
    model, _ = stca("tiny")
    whole, parts = cut_model(StcaSubject(model, Source("seeded")))

    assert sum(n.op_type == "Flatten" for n in whole.graph.node) == 2 * model.config.mixer_layers
    for graph in (whole, parts.encoder, parts.scorer):
        assert optimized_op_types(graph, tmp_path)["SkipLayerNormalization"] == 0
    request = next(sample_requests(model.config, [37], seed=3, n_candidates=5)).inputs
    feeds = {i.name: request[i.name] for i in whole.graph.input}
    np.testing.assert_allclose(run(whole, feeds)[0], model.score(request), rtol=0, atol=1e-5)
