"""Emitted configs, parsed with Triton's own model-config protobuf and checked field by field."""

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.contract import REQUEST_INPUTS, stca_contract
from compiler.core.errors import CompilerError
from compiler.core.names import BASELINES, ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, PYTORCH, SCORER, SPLIT, TORCH, VALIDATOR
from compiler.passes.partition import split
from compiler.repository.deployment import EmitConfig, resolve_deployment
from compiler.repository.reader import SPLIT_ENCODER_FILE, half_files, read_config
from compiler.repository.writer import Graphs, emit
from compiler.runtime.inductor import COMPILE_PARAMETER, INDUCTOR_MODE
from compiler.runtime.ort import OrtGraph, with_cut
from compiler.stca.data import sample_requests
from tests.models import stca


@pytest.fixture(scope="module")
def graphs():
    model, whole = stca("tiny")
    parts = split(whole, REQUEST_INPUTS, model.cut_tensor_names())
    c = model.config
    limits = stca_contract(c)
    warmup = with_cut(OrtGraph(parts.encoder), next(sample_requests(c, [40], seed=0, n_candidates=6)).inputs)
    return Graphs(parts, whole), limits, warmup, parts.cut


def emitted(tmp_path, graphs, checkpoint=None, **cfg):
    g, limits, warmup, _ = graphs
    g = Graphs(g.split, g.whole, checkpoint=checkpoint)
    if cfg.get("target") == "tensorrt":  # the configs are under test here, not the engines (tests/test_engines.py)
        g = Graphs(g.split, g.whole, plans={ENCODER: b"plan", SCORER: b"plan", FUSED: b"plan"})
    options = EmitConfig(**cfg)
    emit(tmp_path, g, limits, ("finish", "skip", "like"), warmup, resolve_deployment(options, options.target))
    return {p.parent.name: read_config(p) for p in tmp_path.glob("*/config.pbtxt")}


def dims(config, kind):
    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in getattr(config, kind)}


@pytest.mark.parametrize("target", ["python", "onnxruntime", "tensorrt"])
def test_every_target_writes_complete_configs(tmp_path, graphs, target):
    two_models = {"split_processes": 2} if target == "python" else {}  # the other targets always serve two
    configs = emitted(tmp_path, graphs, target=target, baselines=BASELINES, **two_models)
    validator = {VALIDATOR} if target != "python" else set()  # the Python-backend models validate requests themselves
    assert set(configs) == {ENSEMBLE, ENCODER, SCORER, FUSED, NAIVE} | validator  # stca_torch needs a checkpoint (tests/e2e)
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == 0  # L and N are -1 dims, never a batch dim
    encoder, scorer, ensemble = configs[ENCODER], configs[SCORER], configs[ENSEMBLE]
    assert dims(encoder, "input") == {"history_item_ids": ("TYPE_INT64", [-1]), "history_actions": ("TYPE_INT64", [-1]),
                                      "history_age_s": ("TYPE_FP32", [-1]), "user_features": ("TYPE_INT64", [4])}
    assert dims(encoder, "output")["K_1"] == ("TYPE_FP32", [-1, 16])
    assert dims(scorer, "output") == {"scores": ("TYPE_FP32", [-1, 3])}
    assert dims(ensemble, "input")["candidate_features"] == ("TYPE_INT64", [-1, 3])
    expected = {"python": ("python", "", mc.ModelInstanceGroup.KIND_CPU),
                "onnxruntime": ("", "onnxruntime_onnx", mc.ModelInstanceGroup.KIND_GPU),
                "tensorrt": ("", "tensorrt_plan", mc.ModelInstanceGroup.KIND_GPU)}[target]
    for config in (encoder, scorer, configs[FUSED]):
        assert (config.backend, config.platform, config.instance_group[0].kind) == expected
        assert len(config.model_warmup) == 1  # warmup on the composing models...
    assert not ensemble.model_warmup  # ...never on the ensemble
    assert configs[NAIVE].backend == "python" and configs[NAIVE].parameters["fused_model"].string_value == FUSED
    model_file = {"python": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}[target]
    assert (tmp_path / ENCODER / "1" / model_file).is_file()


def test_the_python_target_emits_the_pytorch_model_eager_and_compiled_alike_but_for_the_compile_parameter(tmp_path, graphs,
                                                                                                          tiny_checkpoint):
    configs = emitted(tmp_path / "python", graphs, checkpoint=tiny_checkpoint, baselines=BASELINES, cpu_threads=2)
    eager, compiled = configs[TORCH], configs[INDUCTOR]
    assert compiled.parameters[COMPILE_PARAMETER].string_value == INDUCTOR_MODE and COMPILE_PARAMETER not in eager.parameters
    assert {k: v for k, v in compiled.parameters.items() if k != COMPILE_PARAMETER} == dict(eager.parameters)
    assert compiled.parameters["intra_op_threads"].string_value == "2"  # every core in one instance, as stca_torch
    assert list(compiled.instance_group) == list(eager.instance_group) and compiled.instance_group[0].count == 1
    assert (compiled.backend, dims(compiled, "input"), dims(compiled, "output")) == (eager.backend, dims(eager, "input"), dims(eager, "output"))
    assert not compiled.model_warmup  # it compiles and warms up in initialize (compiler/runtime/inductor.py)
    for name in PYTORCH:  # one model.py for both, and each its own copy of the checkpoint
        version = tmp_path / "python" / name / "1"
        assert (version / "model.py").read_text() == (tmp_path / "python" / TORCH / "1" / "model.py").read_text()
        assert sorted(p.name for p in (version / "checkpoint").iterdir()) == sorted(p.name for p in tiny_checkpoint.iterdir())
    other = emitted(tmp_path / "onnxruntime", graphs, checkpoint=tiny_checkpoint, target="onnxruntime", device="cpu", baselines=BASELINES)
    assert not set(PYTORCH) & set(other)  # the python target only


def test_the_ensemble_wires_every_cut_tensor_from_encoder_to_scorer(tmp_path, graphs):
    configs = emitted(tmp_path, graphs, split_processes=2)
    cut = [t.name for t in graphs[3].tensors]
    encoder_step, scorer_step = configs[ENSEMBLE].ensemble_scheduling.step
    assert (encoder_step.model_name, scorer_step.model_name) == (ENCODER, SCORER)
    assert dict(encoder_step.output_map) == {t: t for t in cut}
    assert {k: v for k, v in scorer_step.input_map.items() if k in cut} == {t: t for t in cut}
    assert set(scorer_step.input_map) == set(cut) | {"candidate_item_ids", "candidate_features"}
    assert dict(scorer_step.output_map) == {"scores": "scores"}
    assert configs[ENSEMBLE].parameters["tasks"].string_value == "finish,skip,like"


def test_the_python_target_serves_both_halves_in_one_process_by_default(tmp_path, graphs):
    g, _, _, cut = graphs
    configs = emitted(tmp_path, graphs, baselines=BASELINES)
    assert set(configs) == {ENSEMBLE, SPLIT, FUSED, NAIVE}
    (step,) = configs[ENSEMBLE].ensemble_scheduling.step  # one step: no cut tensor crosses between models
    request = set(REQUEST_INPUTS) | {"candidate_item_ids", "candidate_features"}
    assert step.model_name == SPLIT and dict(step.input_map) == {n: n for n in request}
    assert dict(step.output_map) == {"scores": "scores"}
    split_model = configs[SPLIT]
    assert split_model.backend == "python" and {t.name for t in split_model.input} == request
    assert dims(split_model, "output") == {"scores": ("TYPE_FP32", [-1, 3])}
    assert not {t.name for t in cut.tensors} & {t.name for t in split_model.input}
    encoder_file, scorer_file = half_files(tmp_path)
    assert encoder_file == tmp_path / SPLIT / "1" / SPLIT_ENCODER_FILE
    assert [i.name for i in OrtGraph(encoder_file).session.get_inputs()] == [i.name for i in g.split.encoder.graph.input]
    assert [o.name for o in OrtGraph(scorer_file).session.get_outputs()] == ["scores"]


@pytest.mark.parametrize("split_processes, model", [(1, SPLIT), (2, ENCODER)])
def test_warmup_is_a_real_request_that_passes_validation(tmp_path, graphs, split_processes, model):
    emitted(tmp_path, graphs, split_processes=split_processes)
    config = read_config(tmp_path / model / "config.pbtxt")
    warm = config.model_warmup[0].inputs["history_age_s"]
    data = np.fromfile(tmp_path / model / "warmup" / warm.input_data_file, dtype=np.float32)
    assert list(warm.dims) == [40] and data.shape == (40,) and (data >= 0).all()


def test_the_response_cache_keeps_the_encoder_its_own_model(tmp_path, graphs):
    configs = emitted(tmp_path, graphs, response_cache=True)  # it caches the encoder's answers: the encoder must be a model
    assert SPLIT not in configs and configs[ENCODER].response_cache.enable and not configs[SCORER].response_cache.enable


def test_options_reach_the_configs(tmp_path, graphs):
    configs = emitted(tmp_path, graphs, target="onnxruntime", instances=3, ort_trt_accelerator=True, response_cache=True)
    encoder = configs[ENCODER]
    assert encoder.instance_group[0].count == 3
    assert encoder.response_cache.enable and not configs[SCORER].response_cache.enable
    accel = encoder.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP32"


def test_a_misspelled_field_does_not_parse(tmp_path):
    (tmp_path / "config.pbtxt").write_text('name: "x"\nmax_batch_sise: 0\n')
    with pytest.raises(text_format.ParseError):
        read_config(tmp_path / "config.pbtxt")


@pytest.mark.parametrize("split_processes", [1, 2])
def test_a_cpu_thread_budget_interleaves_single_thread_halves_without_spinning(tmp_path, graphs, split_processes):
    configs = emitted(tmp_path, graphs, baselines=BASELINES, cpu_threads=4, split_processes=split_processes)
    halves = [(SPLIT, 4, "1")] if split_processes == 1 else [(ENCODER, 4, "1"), (SCORER, 4, "1")]
    for name, count, threads in (*halves, (FUSED, 1, "4")):
        config = configs[name]
        assert [(g.count, g.kind) for g in config.instance_group] == [(count, mc.ModelInstanceGroup.KIND_CPU)]
        assert config.parameters["intra_op_threads"].string_value == threads
        assert config.parameters["allow_spinning"].string_value == "0"


def test_onnxruntime_on_a_cpu_host_uses_the_backends_own_thread_parameters_and_a_validator(tmp_path, graphs):
    configs = emitted(tmp_path, graphs, target="onnxruntime", device="cpu", cpu_threads=2, baselines=BASELINES)
    for name in (ENCODER, SCORER, FUSED):
        config = configs[name]
        assert config.platform == "onnxruntime_onnx" and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert config.parameters["intra_op_thread_count"].string_value == ("2" if name == FUSED else "1")
        assert config.parameters["inter_op_thread_count"].string_value == "1"
        assert "intra_op_threads" not in config.parameters  # the python target's parameter name, unknown to that backend
    validator = configs[VALIDATOR]
    assert validator.backend == "python" and (tmp_path / VALIDATOR / "1" / "model.py").is_file()
    request = set(REQUEST_INPUTS) | {"candidate_item_ids", "candidate_features"}
    assert {t.name for t in validator.input} == request
    assert {t.name for t in validator.output} == {f"checked_{n}" for n in request}
    steps = configs[ENSEMBLE].ensemble_scheduling.step
    assert [s.model_name for s in steps] == [VALIDATOR, ENCODER, SCORER]
    # no C++-backend step reads a request input that did not pass through the validator
    for step in steps[1:]:
        read = {model_input: tensor for model_input, tensor in step.input_map.items() if model_input in request}
        assert read and all(tensor == f"checked_{name}" for name, tensor in read.items())


@pytest.mark.parametrize("cfg, message", [
    ({"target": "tensorrt", "device": "cpu"}, "TensorRT plans run on a GPU"),
    ({"target": "python", "device": "gpu"}, "runs ONNX Runtime on the CPU"),
    ({"device": "tpu"}, "is not one of"),
    ({"cpu_threads": -1}, "must be at least 1"),
    ({"split_processes": 3}, "is not 1 or 2"),
    ({"target": "onnxruntime", "split_processes": 1}, "already hands the cut between the halves in one process"),
    ({"split_processes": 1, "history_cache_at": "scorer"}, "needs --split-processes 2"),
    ({"split_processes": 1, "response_cache": True}, "needs the encoder as its own model"),
])
def test_impossible_device_and_thread_choices_are_refused(cfg, message):
    with pytest.raises(CompilerError, match=message):
        EmitConfig(**cfg)


def test_warmup_values_without_the_cut_are_refused(tmp_path, graphs):
    from compiler.core.errors import CompilerError

    g, limits, warmup, cut = graphs
    request_only = {k: v for k, v in warmup.items() if k not in {t.name for t in cut.tensors}}
    with pytest.raises(CompilerError, match="the warmup values lack"):
        emit(tmp_path, g, limits, ("finish", "skip", "like"), request_only, resolve_deployment(EmitConfig(), "python"))


@pytest.mark.parametrize("target", ["python", "onnxruntime"])
def test_the_ensembles_steps_bound_their_queues_and_the_ensemble_and_baselines_do_not(tmp_path, graphs, target):
    configs = emitted(tmp_path / "bounded", graphs, target=target, baselines=BASELINES, queue_limit=5)
    for name, config in configs.items():
        policy = config.dynamic_batching.default_queue_policy
        if name in (ENSEMBLE, FUSED, NAIVE):  # the ensemble has no queue of its own; the baselines are references
            assert not config.HasField("dynamic_batching"), name
        else:
            assert (policy.max_queue_size, policy.timeout_action) == (5, mc.ModelQueuePolicy.REJECT), name
            assert config.max_batch_size == 0 and not config.dynamic_batching.preferred_batch_size  # no batches formed
    unbounded = emitted(tmp_path / "unbounded", graphs, target=target, queue_limit=0)
    assert not any(config.HasField("dynamic_batching") for config in unbounded.values())
