"""The fp16 cut: both halves rewritten so the cut crosses in fp16, and the scores barely move."""

import numpy as np
import onnx
import pytest

from compiler.core.contract import PAD_ITEM_ID, REQUEST_INPUTS
from compiler.passes.cut_dtype import narrow_cut
from compiler.passes.partition import Split, split
from compiler.precision.convert import to_fp16
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.stca.data import sample_requests
from tests.models import stca


@pytest.fixture(scope="module")
def tiny():
    model, whole = stca("tiny")
    parts = split(whole, REQUEST_INPUTS, model.cut_tensor_names())
    requests = [r.inputs for r in sample_requests(model.config, [1, 60, 400], seed=3, n_candidates=9)]
    padded = {**requests[-1], "history_item_ids": requests[-1]["history_item_ids"].copy()}
    padded["history_item_ids"][::3] = PAD_ITEM_ID
    return parts, [*requests, padded]


def dtypes(values) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in values}


def casts(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Cast" for n in model.graph.node)


def test_fp32_halves_ship_fp16_and_score_within_fp16_rounding(tiny):
    parts, requests = tiny
    encoder = OrtGraph(parts.encoder)
    result = narrow_cut(parts, [encoder.run(r) for r in requests])
    assert "K_1" in result.narrowed and "V_2" in result.narrowed
    assert "key_bias" in result.kept and "do not fit fp16" in result.kept["key_bias"]  # padding's -1e9
    outputs, inputs = dtypes(result.split.encoder.graph.output), dtypes(result.split.scorer.graph.input)
    for name in result.narrowed:
        assert outputs[name] == inputs[name] == onnx.TensorProto.FLOAT16
    assert outputs["key_bias"] == inputs["key_bias"] == onnx.TensorProto.FLOAT
    assert dtypes(parts.encoder.graph.output)["K_1"] == onnx.TensorProto.FLOAT  # the caller's graphs are not modified
    crossing = {t.name: t.dtype for t in result.split.cut.tensors}
    assert crossing["K_1"] == "float16" and crossing["key_bias"] == "float32"  # the cut says what crosses
    before = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    after = SplitRunner(OrtGraph(result.split.encoder), OrtGraph(result.split.scorer))
    for request in requests:
        reference, narrowed = before.score(request), after.score(request)
        assert narrowed.dtype == np.float32 and not np.array_equal(reference, narrowed)  # the cut really was rounded
        np.testing.assert_allclose(narrowed, reference, atol=2e-3)


def test_fp16_halves_lose_the_casts_on_both_sides_of_the_cut(tiny):
    parts, requests = tiny
    encoder16, _ = to_fp16(parts.encoder)
    scorer16, _ = to_fp16(parts.scorer)
    result = narrow_cut(Split(encoder16, scorer16, parts.cut), [OrtGraph(encoder16).run(r) for r in requests])
    # each narrowed tensor had an fp16 -> fp32 cast before the cut and an fp32 -> fp16 cast after it
    assert casts(result.split.encoder) < casts(encoder16) and casts(result.split.scorer) < casts(scorer16)
    before = SplitRunner(OrtGraph(encoder16), OrtGraph(scorer16))
    after = SplitRunner(OrtGraph(result.split.encoder), OrtGraph(result.split.scorer))
    for request in requests:
        np.testing.assert_allclose(after.score(request), before.score(request), atol=1e-3)


def test_a_tensor_whose_sampled_values_overflow_fp16_stays_fp32(tiny):
    parts, requests = tiny
    samples = [OrtGraph(parts.encoder).run(r) for r in requests[:1]]
    samples[0]["V_1"] = samples[0]["V_1"] * 1e6
    result = narrow_cut(parts, samples)
    assert "V_1" in result.kept and "V_1" not in result.narrowed and "K_1" in result.narrowed
