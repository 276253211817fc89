"""Precision graphs: what stays fp32 and why, int8 Q/DQ structure, and accuracy against PyTorch."""

import numpy as np
import onnx
import pytest

from compiler.core.contract import REQUEST_INPUTS
from compiler.passes.lint import lint
from compiler.passes.partition import split
from compiler.precision import calibrate
from compiler.precision.calibrate import CalibrationSet
from compiler.precision.convert import (
    PrecisionConfig,
    attention_matmuls,
    convert,
    discretization_inputs,
    length_reductions,
    to_fp16,
    weight_matmuls,
)
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.stca.data import sample_requests
from tests.models import stca
from tests.ort_optimized import optimized

FP16, FP32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


@pytest.fixture(scope="module")
def tiny():
    model, whole = stca("tiny")
    return model, split(whole, REQUEST_INPUTS, model.cut_tensor_names())


@pytest.fixture(scope="module")
def calibration_set(tmp_path_factory, tiny):
    model, _ = tiny
    return calibrate.generate(tmp_path_factory.mktemp("cal") / "set", model.config, count=6, n_candidates=32)


def output_types(model):
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.value_info, *model.graph.output]}
    return {n.name: types.get(n.output[0]) for n in model.graph.node}


def test_the_reductions_over_L_are_found_from_the_symbolic_dim(tiny):
    _, parts = tiny
    found = length_reductions(parts.scorer, "L")
    M = 2
    assert sorted(found.values()).count("MatMul contracts over L") == M  # alpha @ V in every layer
    assert sorted(found.values()).count("Softmax over L") == M
    assert length_reductions(parts.encoder, "L") == {}  # the encoder reduces over D, never over L


def test_the_age_bucketing_is_found_as_feeding_a_discontinuous_op(tiny):
    _, parts = tiny
    found = discretization_inputs(parts.encoder)
    ops = {n.name: n.op_type for n in parts.encoder.graph.node}
    assert {"Floor", "Log"} <= {ops[name] for name in found}  # floor(log2(1 + age))
    assert all(ops[name] not in ("Gemm", "MatMul") for name in found)  # the dense layers stay free to go fp16
    assert discretization_inputs(parts.scorer) == {}


def test_fp16_keeps_io_dtypes_and_the_sensitive_nodes_in_fp32(tiny):
    _, parts = tiny
    for half in (parts.encoder, parts.scorer):
        converted, details = to_fp16(half)
        io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]  # noqa: E731
        assert io(converted) == io(half)
        types = output_types(converted)
        kept = {**details["kept_fp32"]["length_reductions"], **details["kept_fp32"]["feeding_discontinuous_ops"]}
        for node in converted.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax") or node.name in kept:
                assert types[node.name] in (FP32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL), node.name
        assert sum(t == FP16 for t in types.values()) > details["nodes"]["fp32"]  # most of the graph is fp16


def test_fp16_gets_the_age_bucket_right_at_a_boundary(tiny):
    """An age just above 2^9 - 1 must land in bucket 9, as in fp32; fp16 arithmetic would put it in 8."""
    model, parts = tiny
    request = next(sample_requests(model.config, [40], seed=1, n_candidates=8)).inputs
    request["history_age_s"][:] = np.float32(511.7)
    encoder16, _ = to_fp16(parts.encoder)
    exact, half = OrtGraph(parts.encoder).run(request), OrtGraph(encoder16).run(request)
    for name in exact:
        np.testing.assert_allclose(half[name], exact[name], rtol=0, atol=2e-2, err_msg=name)


def test_fp16_halves_score_within_fp16_error(tiny):
    model, parts = tiny
    halves = convert(parts, PrecisionConfig("fp16"))
    runner = SplitRunner(OrtGraph(halves.split.encoder), OrtGraph(halves.split.scorer))
    exact = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    for request in sample_requests(model.config, [1, 300, 5_000], seed=4, n_candidates=64):
        np.testing.assert_allclose(runner.score(request.inputs), exact.score(request.inputs), rtol=0, atol=3e-3)


def test_int8_is_symmetric_per_channel_qdq_and_leaves_the_attention_bmms_alone(tiny, calibration_set):
    model, parts = tiny
    halves = convert(parts, PrecisionConfig("int8"), calibration_set)
    for graph in (halves.split.encoder, halves.split.scorer):
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
        qdq = [n for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq
        for node in qdq:
            if len(node.input) > 2:
                assert consts[node.input[2]].dtype == np.int8 and not consts[node.input[2]].any()
        per_channel = [n for n in qdq if consts.get(n.input[1], np.zeros(1)).size > 1]
        assert per_channel and all(any(a.name == "axis" for a in n.attribute) for n in per_channel)
    bmms = set(attention_matmuls(parts.scorer))
    assert len(bmms) == 2 * model.config.n_layers  # QK^T and alpha V in every layer
    producers = {o: n.op_type for n in halves.split.scorer.graph.node for o in n.output}
    for node in halves.split.scorer.graph.node:
        if node.name in bmms:
            assert "DequantizeLinear" not in {producers.get(i) for i in node.input}, node.name
    assert halves.details["calibration"]["sha256"] == calibration_set.sha256


def test_cpu_int8_runs_every_weight_matmul_in_onnx_runtimes_integer_kernels(tiny, calibration_set, tmp_path):
    """uint8 activations with nonzero zero points, int8 per-channel weights; after ONNX Runtime's optimizer no
    Gemm or MatMul reads a DequantizeLinear (each quantized one became QGemm or MatMulIntegerToFloat), the
    attention bmms stay float, and the scores stay close to fp32."""
    model, parts = tiny
    halves = convert(parts, PrecisionConfig("int8"), calibration_set, int8_form="cpu")
    for name, graph, fp32 in (("encoder", halves.split.encoder, parts.encoder), ("scorer", halves.split.scorer, parts.scorer)):
        assert halves.details[name]["form"] == "cpu"
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
        dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
        activation_zero_points = [consts[n.input[2]] for n in dq if n.input[0] not in consts]
        assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
        quantized_constants = {consts[n.input[0]].dtype for n in dq if n.input[0] in consts}
        assert quantized_constants == {np.dtype(np.int8), np.dtype(np.int32)}  # weights int8, Gemm biases int32
        run = optimized(graph, tmp_path / f"{name}.onnx")
        producers = {o: n.op_type for n in run.graph.node for o in n.output}
        fallen_back = [n.name for n in run.graph.node if n.op_type in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")
                       and "DequantizeLinear" in {producers.get(i) for i in n.input}]
        assert fallen_back == []
        integer = sum(n.op_type in ("QGemm", "MatMulIntegerToFloat") for n in run.graph.node)
        assert integer == sum(n.op_type in ("Gemm", "MatMul") for n in fp32.graph.node) - len(attention_matmuls(fp32))
        assert lint(graph, name, tensorrt_qdq=False).ok  # no TensorRT engine reads this form
        assert any("is not INT8" in p for p in lint(graph, name).problems)  # TensorRT's rules would refuse it
    reference = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    quantized = SplitRunner(OrtGraph(halves.split.encoder), OrtGraph(halves.split.scorer))
    for request in sample_requests(model.config, [1, 300], seed=4, n_candidates=32):
        assert np.abs(quantized.score(request.inputs) - reference.score(request.inputs)).max() < 0.05


class CountedSet(CalibrationSet):
    """The real calibration set, counting the requests read from it."""

    read = 0

    def requests(self):
        for request in super().requests():
            type(self).read += 1
            yield request


def test_a_graph_converted_again_on_the_same_feeds_reads_its_ranges_instead_of_calibrating(tiny, calibration_set, tmp_path):
    """The int8 fallback converts a half once per layer it tries. With a ranges directory, each float graph is
    calibrated once per feeds, and what a conversion makes from the kept ranges is what calibrating again makes."""
    _, parts = tiny
    counted, cfg, count = CountedSet(*vars(calibration_set).values()), PrecisionConfig("int8", int8_form="cpu"), calibration_set.count
    convert(parts, cfg, counted, ranges=tmp_path)
    assert CountedSet.read == 2 * count  # the encoder on the requests, the scorer on the encoder's cut

    one_scorer_layer = {"scorer": weight_matmuls(parts.scorer)[:1]}
    again = convert(parts, cfg, counted, keep_float=one_scorer_layer, ranges=tmp_path)
    assert CountedSet.read == 2 * count
    calibrated = convert(parts, cfg, calibration_set, keep_float=one_scorer_layer)
    for name in ("encoder", "scorer"):
        assert again.graphs()[name].SerializeToString() == calibrated.graphs()[name].SerializeToString()

    # another int8 encoder hands the scorer another cut: the scorer is calibrated again, the encoder is not
    convert(parts, cfg, counted, keep_float={"encoder": weight_matmuls(parts.encoder)[:1]}, ranges=tmp_path)
    assert CountedSet.read == 3 * count


def test_per_half_precision_overrides_the_build_precision(tiny, calibration_set):
    _, parts = tiny
    halves = convert(parts, PrecisionConfig("fp32", scorer="int8"), calibration_set)
    assert (halves.encoder_precision, halves.scorer_precision) == ("fp32", "int8")
    assert halves.split.encoder is parts.encoder
    assert any(n.op_type == "QuantizeLinear" for n in halves.split.scorer.graph.node)


def test_the_cut_is_narrowed_only_where_its_bytes_cost_time():
    """fp16 where the cut is copied between stub processes or read from GPU memory; in one CPU process the scorer
    reads the encoder's buffer, so the cut stays in the dtype the scorer computes in."""
    from compiler.repository.deployment import EmitConfig, resolve_deployment

    one_process, two_processes = resolve_deployment(EmitConfig(), "python"), resolve_deployment(EmitConfig(split_processes=2), "python")
    on_gpu, ort_on_cpu = resolve_deployment(EmitConfig(), "onnxruntime"), resolve_deployment(EmitConfig(device="cpu"), "onnxruntime")
    assert [d.cut_bytes_cost for d in (one_process, two_processes, on_gpu, ort_on_cpu)] == [False, True, True, False]
    assert [PrecisionConfig("int8").cut_precision(costs) for costs in (False, True)] == ["fp32", "fp16"]
    assert PrecisionConfig("int8", int8_high_precision="fp16").cut_precision(False) == "fp16"  # the scorer computes in fp16
    assert PrecisionConfig("fp16").cut_precision(False) == PrecisionConfig("fp32", scorer="fp16").cut_precision(False) == "fp16"
    assert PrecisionConfig("int8", scorer="fp32").cut_precision(False) == "fp32"
    assert PrecisionConfig("fp32").cut_precision(True) == "fp32"  # an fp32 build narrows only when asked
    assert PrecisionConfig("int8", cut="fp16").cut_precision(False) == PrecisionConfig("fp32", cut="fp16").cut_precision(True) == "fp16"


def test_int8_needs_a_calibration_set(tiny):
    _, parts = tiny
    with pytest.raises(Exception, match="no calibration set"):
        convert(parts, PrecisionConfig("int8"))


def test_the_fused_baseline_is_quantized_at_the_base_precision_from_the_same_requests(calibration_set):
    model, whole = stca("tiny")
    parts = split(whole, REQUEST_INPUTS, model.cut_tensor_names())
    halves = convert(parts, PrecisionConfig("int8", encoder="fp32"), calibration_set, whole)
    assert not any(n.op_type == "QuantizeLinear" for n in halves.split.encoder.graph.node)
    assert any(n.op_type == "QuantizeLinear" for n in halves.whole.graph.node)
    request = next(sample_requests(model.config, [40], seed=2, n_candidates=8)).inputs
    assert OrtGraph(halves.whole).run(request)["scores"].shape == (8, len(model.config.tasks))
