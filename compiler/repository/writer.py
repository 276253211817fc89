"""Emit stage: ONNX halves -> a Triton model repository with ensemble scheduling, for a Deployment
(compiler.repository.deployment: which target, device, cores and processes).

    stca_history_encoder/   per request: history + user inputs -> the cut tensors
    stca_candidate_scorer/  per candidate set: cut tensors + candidate inputs -> scores
    stca_split/             (python target, the default) both halves in one Python-backend process instead of the
                            two above: the encoder's graph, then the scorer's, the cut handed over in memory
    stca/                   the ensemble clients call; wires the cut tensors from encoder to scorer (or calls stca_split)
    stca_request_validator/ (onnxruntime and tensorrt targets) the ensemble's first step: those backends do not
                            check a request, so this Python-backend model does, and passes the inputs on
    stca_fused/, stca_naive/   (--baselines) the unsplit graph, and the point-wise baseline
    stca_torch/                (--baselines, python target) the PyTorch model, eager
    stca_inductor/             (--baselines, python target) the PyTorch model under torch.compile (inductor), compiled at load

Configs are built as Triton ModelConfig protobufs (tritonclient's model_config_pb2) and written in text
format, so every field name and enum is checked by construction. L and N are -1 dims with
max_batch_size 0 (ensembles neither broadcast nor batch as a whole); concurrency comes from instance
groups, sized on a CPU by the thread budget (compiler.repository.budget); warmup runs a real request on the composing
models, never on the ensemble.
"""

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.artifacts import sha256_file
from compiler.core.contract import CONTRACT_PARAMETER, Contract
from compiler.core.errors import CompilerError
from compiler.core.names import ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, PYTORCH, SCORER, SPLIT, VALIDATOR
from compiler.passes.row_locality import RowGraphs
from compiler.passes.partition import Split
from compiler.repository import budget
from compiler.repository.deployment import Deployment, EmitConfig
from compiler.repository.reader import SPLIT_ENCODER_FILE, read_config, update_config, write_config
from compiler.runtime.inductor import COMPILE_PARAMETER, INDUCTOR_MODE
from compiler.runtime.ort import OrtGraph

VALIDATED_PREFIX = "checked_"  # the validator's outputs: a request input that passed the contract
TRITON_TYPES = {
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "int64": mc.TYPE_INT64,
    "int32": mc.TYPE_INT32,
    "bool": mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class Graphs:
    """The graphs a repository is made from; plans are the TensorRT engines when target is tensorrt."""

    split: Split  # the halves as served
    whole: onnx.ModelProto  # the unsplit graph: ensemble I/O and the stca_fused baseline
    plans: dict | None = None  # {ENCODER: bytes, SCORER: bytes, FUSED: bytes}
    row_cache: RowGraphs | None = None  # the encoder's key and row graphs (compiler.passes.row_locality), where row-local
    checkpoint: Path | None = None  # the PyTorch checkpoint, for the stca_torch and stca_inductor baselines


def emit(repo: Path, graphs: Graphs, contract: Contract, tasks: tuple[str, ...], warmup: dict, cfg: Deployment) -> list[Path]:
    """Write every model directory of the repository into `repo` (which the caller owns); return the files.
    `warmup`: a real request's inputs and the encoder's outputs on it (compiler.runtime.ort.with_cut), by name;
    each composing model warms up on the ones it reads."""
    if cfg.target == "tensorrt" and not graphs.plans:
        raise CompilerError("target tensorrt: no TensorRT plans were built (see compiler.repository.engines)")
    missing = sorted(set(_io(graphs.split.scorer.graph.input)) - set(warmup))
    if missing:
        raise CompilerError(f"emit: the warmup values lack {missing}; give the request with the encoder's outputs on it")
    written: list[Path] = []
    request_inputs = _io(graphs.whole.graph.input)
    request = {name: warmup[name] for name in request_inputs}
    holder = cfg.cache_holder(graphs.row_cache)
    placements = cfg.placements(holder)
    if cfg.split_processes == 1:
        written += _split_model(repo, graphs, contract, request, cfg, placements)
        steps = [(SPLIT, request_inputs, _io(graphs.whole.graph.output))]
    else:
        encoder, scorer_inputs = graphs.split.encoder, _io(graphs.split.scorer.graph.input)
        if holder == SCORER:  # the encoder step serves the key graph; the scorer turns keys into the cut from its cache
            encoder = graphs.row_cache.key_graph
            warmup = {**warmup, **OrtGraph(encoder).run(request)}
            scorer_inputs = {**_io(encoder.graph.output), **{n: v for n, v in scorer_inputs.items() if n not in graphs.row_cache.cached}}
        encoder_warmup = {name: warmup[name] for name in _io(encoder.graph.input)}
        scorer_warmup = {name: warmup[name] for name in scorer_inputs}
        written += _composing_model(repo, ENCODER, encoder, contract, encoder_warmup, cfg, placements, graphs.plans, cfg.options.response_cache)
        written += _composing_model(repo, SCORER, graphs.split.scorer, contract, scorer_warmup, cfg, placements, graphs.plans, inputs=scorer_inputs)
        steps = [(ENCODER, _io(encoder.graph.input), _io(encoder.graph.output)), (SCORER, scorer_inputs, _io(graphs.split.scorer.graph.output))]
    if holder is not None:
        written += _row_cache(repo / holder, graphs.row_cache, cfg.options)
    validated = cfg.target != "python"  # the Python-backend models check requests themselves
    if validated:
        written += _validator_model(repo, graphs.whole, contract, cfg)
    ensemble = _ensemble_config(graphs.whole, steps, contract, validated)  # its contract is what clients validate with
    ensemble.parameters["tasks"].string_value = ",".join(tasks)  # the columns of scores
    written += write_config(repo, ensemble)
    (repo / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version directory, even empty
    baselines = cfg.options.baselines
    if FUSED in baselines:
        written += _composing_model(repo, FUSED, graphs.whole, contract, request, cfg, placements, graphs.plans)
    if NAIVE in baselines:
        written += _naive_model(repo, graphs.whole, contract, cfg, placements[NAIVE])
    if cfg.target == "python" and graphs.checkpoint is not None:  # the GPU containers have no torch
        for name in (name for name in PYTORCH if name in baselines):
            written += _torch_model(repo, name, graphs.whole, graphs.checkpoint, contract, placements[name])
    if cfg.options.queue_limit:  # the ensemble's steps, which its requests queue for; not the baselines
        for model in [VALIDATOR] * validated + [model for model, _, _ in steps]:
            update_config(repo, model, lambda config: bound_queue(config, cfg.options.queue_limit))  # the same file
    return written


def bound_queue(config: mc.ModelConfig, limit: int) -> None:
    """At most `limit` requests wait for the model's instances; one more is refused at once (HTTP 503, gRPC UNAVAILABLE,
    "Exceeds maximum queue size"), which a client may retry, where an unbounded queue would make every request wait
    longer under overload, the answered ones included. Triton's queue policy belongs to its dynamic batcher; with
    max_batch_size 0 the batcher forms no batches (each request runs alone, as before) and only bounds the queue."""
    config.dynamic_batching.default_queue_policy.max_queue_size = limit
    config.dynamic_batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT


def _composing_model(repo, name, graph, contract, warmup, cfg: Deployment, placements: dict, plans=None, cache: bool = False,
                     inputs: dict | None = None) -> list[Path]:
    """One composing model; `inputs` (name -> (dtype, dims)) where its config declares other inputs than its graph has
    (a scorer holding the row cache takes row keys instead of the cut)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    config = _model_config(name, graph, contract, inputs)
    written = []
    if cfg.target == "python":
        config.backend = "python"
        budget.configure(config, placements[name], "python")
        written += [_save_onnx(graph, version / "model.onnx")]
        written += _python_files(version, "onnx_model.py")
    elif cfg.target == "onnxruntime" and cfg.device == "cpu":
        config.platform = "onnxruntime_onnx"
        budget.configure(config, placements[name], "onnxruntime")
        written += [_save_onnx(graph, version / "model.onnx")]
    elif cfg.target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.instance_group.add(count=cfg.options.instances or 1, kind=mc.ModelInstanceGroup.KIND_GPU)
        if cfg.options.ort_trt_accelerator:
            accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accel.parameters["precision_mode"] = "FP16" if _has_fp16(graph) else "FP32"
            accel.parameters["max_workspace_size_bytes"] = str(4 << 30)
        written += [_save_onnx(graph, version / "model.onnx")]
    else:
        config.platform = "tensorrt_plan"
        group = config.instance_group.add(count=cfg.options.instances or 1, kind=mc.ModelInstanceGroup.KIND_GPU)
        group.profile.extend(str(i) for i in range(cfg.tensorrt_profiles))  # the backend picks one per request
        plan_file = version / "model.plan"
        plan_file.write_bytes(plans[name])
        written += [plan_file]
    if cache:
        config.response_cache.enable = True
    written += _warmup(repo / name, config, warmup)
    written += write_config(repo, config)
    return written


def _split_model(repo: Path, graphs: Graphs, contract: Contract, request: dict, cfg: Deployment, placements: dict) -> list[Path]:
    """Both halves in one Python-backend model: the scorer as its model.onnx, taking the request's inputs, and the
    encoder beside it (SPLIT_ENCODER_FILE), which runs first (compiler/runtime/triton_python/onnx_model.py)."""
    written = _composing_model(repo, SPLIT, graphs.split.scorer, contract, request, cfg, placements, inputs=_io(graphs.whole.graph.input))
    return written + [_save_onnx(graphs.split.encoder, repo / SPLIT / "1" / SPLIT_ENCODER_FILE)]


def _row_cache(model_dir: Path, row_graphs: RowGraphs, options: EmitConfig) -> list[Path]:
    """The row cache in the model that holds it: the key and row graphs beside model.onnx, the cache module, and the
    parameters the served model reads (compiler/runtime/triton_python/onnx_model.py). In the history encoder, model.onnx
    stays the whole encoder (in stca_split, encoder.onnx does): with history_cache_bytes set to 0 the model serves
    from it, uncached. In the scorer, model.onnx is the scorer, its inputs are the row keys, and with
    history_cache_bytes 0 it computes every distinct row of each request."""
    version = model_dir / "1"
    written = [_save_onnx(row_graphs.key_graph, version / "key_graph.onnx"), _save_onnx(row_graphs.row_graph, version / "row_graph.onnx")]
    (version / "stca_row_cache.py").write_text((resources.files("compiler.runtime") / "row_cache.py").read_text())
    config = read_config(model_dir / "config.pbtxt")
    config.parameters["history_cache_bytes"].string_value = str(options.history_cache_bytes)
    config.parameters["history_cache_admission"].string_value = options.history_cache_admission
    config.parameters["history_cache_skip"].string_value = str(int(options.history_cache_skip))
    config.parameters["history_cache"].string_value = json.dumps({
        "keys": [[k.name, k.dtype] for k in row_graphs.keys],
        "rows": {name: [s.dtype, list(s.row_shape)] for name, s in row_graphs.row_specs.items()},
        "weights_sha256": sha256_file(written[1]),
        "keys_arrive": model_dir.name == SCORER,  # the key graph ran in the step before: look the keys up directly
        "multiplicity": row_graphs.multiplicity,  # repeated rows reach the scorer once, counted in this output
    })
    write_config(model_dir.parent, config)  # replaces the encoder's config, already in the caller's list
    return written + [version / "stca_row_cache.py"]


def _naive_model(repo: Path, whole: onnx.ModelProto, contract: Contract, cfg: Deployment, placement: budget.Placement) -> list[Path]:
    version = repo / NAIVE / "1"
    version.mkdir(parents=True, exist_ok=True)
    config = _model_config(NAIVE, whole, contract, backend="python")
    config.parameters["fused_model"].string_value = FUSED
    if cfg.device == "cpu":
        budget.configure(config, placement, budget.config_kind(NAIVE, cfg.target))
    else:
        config.instance_group.add(count=cfg.options.instances or 1, kind=mc.ModelInstanceGroup.KIND_CPU)
    return _python_files(version, "naive_model.py") + write_config(repo, config)


def _torch_model(repo: Path, name: str, whole: onnx.ModelProto, checkpoint: Path, contract: Contract,
                 placement: budget.Placement) -> list[Path]:
    """One of the PyTorch baselines (names.PYTORCH): the checkpoint and torch_model.py, eager, or compiled at load for
    stca_inductor."""
    version = repo / name / "1"
    shutil.copytree(checkpoint, version / "checkpoint")
    config = _model_config(name, whole, contract, backend="python")
    budget.configure(config, placement, budget.config_kind(name, "python"))
    if name == INDUCTOR:
        config.parameters[COMPILE_PARAMETER].string_value = INDUCTOR_MODE
    return _python_files(version, "torch_model.py") + sorted((version / "checkpoint").iterdir()) + write_config(repo, config)


def _validator_model(repo: Path, whole: onnx.ModelProto, contract: Contract, cfg: Deployment) -> list[Path]:
    """A Python-backend model that checks a request against the contract and passes every input on, renamed
    VALIDATED_PREFIX + name, so the ensemble's C++-backend steps only ever see checked inputs."""
    version = repo / VALIDATOR / "1"
    version.mkdir(parents=True, exist_ok=True)
    config = _model_config(VALIDATOR, whole, contract, backend="python")
    del config.output[:]
    for name, (dtype, dims) in _io(whole.graph.input).items():
        config.output.add(name=VALIDATED_PREFIX + name, data_type=TRITON_TYPES[dtype], dims=dims)
    config.instance_group.add(count=cfg.options.instances or 1, kind=mc.ModelInstanceGroup.KIND_CPU)
    return _python_files(version, "validator_model.py") + write_config(repo, config)


def _ensemble_config(whole: onnx.ModelProto, steps: list[tuple[str, dict, dict]], contract: Contract, validated: bool) -> mc.ModelConfig:
    """The steps (model, its inputs, its outputs) in order, wired by name: encoder -> scorer, or stca_split alone; with
    `validated`, the request inputs reach them through the validator."""
    config = _model_config(ENSEMBLE, whole, contract, platform="ensemble")
    request_inputs = set(_io(whole.graph.input))
    source = {name: name for name in request_inputs}  # ensemble tensor that carries each request input
    if validated:
        step = config.ensemble_scheduling.step.add(model_name=VALIDATOR, model_version=-1)
        for name in sorted(request_inputs):
            step.input_map[name] = name
            step.output_map[VALIDATED_PREFIX + name] = source[name] = VALIDATED_PREFIX + name
    read = set()
    for model, inputs, outputs in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        for name in inputs:
            step.input_map[name] = source.get(name, name)  # a request input, or a cut tensor (or row key) an earlier step made
        for name in outputs:
            step.output_map[name] = name
        read |= set(step.input_map.values())
    unused = [name for name in request_inputs if source[name] not in read]
    if unused:
        raise CompilerError(f"emit: model input(s) {sorted(unused)} are read by neither half; the ensemble would reject them")
    return config


def _model_config(name: str, graph: onnx.ModelProto, contract: Contract, inputs: dict | None = None, **fields) -> mc.ModelConfig:
    """What every model of the repository declares: no batch dim (L and N are -1 dims), the graph's inputs and
    outputs, and the request contract its models (and clients) validate with."""
    config = mc.ModelConfig(name=name, max_batch_size=0, **fields)
    for tensor, (dtype, dims) in (inputs or _io(graph.graph.input)).items():
        config.input.add(name=tensor, data_type=TRITON_TYPES[dtype], dims=dims)
    for tensor, (dtype, dims) in _io(graph.graph.output).items():
        config.output.add(name=tensor, data_type=TRITON_TYPES[dtype], dims=dims)
    config.parameters[CONTRACT_PARAMETER].string_value = json.dumps(contract.to_dict())
    return config


def _io(values) -> dict:
    """name -> (numpy dtype name, dims with -1 for symbolic dims), in graph order."""
    io = {}
    for v in values:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name
        if dtype not in TRITON_TYPES:
            raise CompilerError(f"emit: {v.name} has dtype {dtype}, which the Triton configs here do not map")
        io[v.name] = (dtype, [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
    return io


def _warmup(model_dir: Path, config: mc.ModelConfig, inputs: dict) -> list[Path]:
    """A real request as warmup data files: random ids could be negative and fail validation on load."""
    label = ", ".join(f"{name} {list(np.shape(value))}" for name, value in list(inputs.items())[:2])
    warmup = config.model_warmup.add(name=f"sample request ({label})", count=1)
    folder = model_dir / "warmup"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in inputs.items():
        value = np.ascontiguousarray(value)
        path = folder / name
        path.write_bytes(value.tobytes())
        written.append(path)
        warmup.inputs[name].data_type = TRITON_TYPES[value.dtype.name]
        warmup.inputs[name].dims.extend(value.shape)
        warmup.inputs[name].input_data_file = name
    return written


PYCACHE_BLOCKER = "Not a directory on purpose: Python cannot write bytecode here, so this repository stays as built.\n"


def _python_files(version: Path, template: str) -> list[Path]:
    """model.py from a template, the two modules it imports from beside itself, and the bytecode blocker."""
    served = resources.files("compiler.runtime.triton_python")
    files = {"model.py": served / template, "stca_base_model.py": served / "base_model.py",
             "stca_contract.py": resources.files("compiler.core") / "contract.py"}
    for name, source in files.items():
        (version / name).write_text(source.read_text())
    (version / "__pycache__").write_text(PYCACHE_BLOCKER)
    return [version / name for name in (*files, "__pycache__")]


def _save_onnx(graph: onnx.ModelProto, path: Path) -> Path:
    onnx.save(graph, str(path))
    return path


def _has_fp16(graph: onnx.ModelProto) -> bool:
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)


