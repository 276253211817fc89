"""build(): the pipeline, stage after stage: load -> export -> partition -> precision -> attention -> verify -> lint ->
history cache -> engines -> emit (verify's requests and the fp32 model's answers to them are made once, before the
first precision attempt, and judge every graph the build tries).

Every stage is a function from plain artifacts to plain artifacts (the stage folders of compiler/); this module
only calls them in order, gates on verification, and writes the repository, manifest.json and report.md
atomically. Nothing is written when a stage or a gate fails. What is compiled is a subject (compiler.load): this
package's STCA model, or the user's own ONNX file or ExportedProgram; every stage after load treats both alike.
"""

import contextlib
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import onnx

from compiler.core.artifacts import atomic_directory, check_replaceable
from compiler.core.errors import CompilerError
from compiler.core.log import log, stage
from compiler.core.machine import machine, versions
from compiler.core.names import ENCODER, FUSED, PYTORCH, SCORER
from compiler.core.precisions import least_precise
from compiler.load.stca import StcaSpec, load_stca
from compiler.load.subject import Subject
from compiler.load.user_model import UserModelSpec, load_user_model, opset_of
from compiler.passes import history_multiset, lint, row_locality
from compiler.passes.cut_dtype import narrow_cut
from compiler.passes.fused_attention import FUSED_DOMAIN, FUSED_OP, fuse_attention
from compiler.passes.row_locality import RowGraphs, RowLocality
from compiler.passes.layer_norm_rows import layer_norms_on_rows
from compiler.passes.partition import Split, split
from compiler.precision import calibrate
from compiler.precision.convert import Halves, PrecisionConfig, convert
from compiler.precision.int8_fallback import Attempt, keep_float, keep_float_until_the_gates_pass, rank_layers
from compiler.repository import manifest, report
from compiler.repository.budget import ThreadBudget
from compiler.repository.deployment import Deployment, EmitConfig, resolve_deployment
from compiler.repository.engines import EngineConfig, Plans, TrtGraph, build_plans, require_tensorrt, resolve_target
from compiler.repository.manifest import BuildRecord, PrecisionRecord, is_build
from compiler.repository.writer import Graphs, emit
from compiler.runtime.ort import OrtGraph, SplitRunner, with_cut
from compiler.stca.checkpoint import save_checkpoint
from compiler.stca.data import kuairand_lengths
from compiler.stca.model import STCA, STCAConfig
from compiler.verify.gates import HeldOut, VerifyConfig, held_out, verify

DEFAULT_CALIBRATION_REQUESTS = 32


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("triton_repo")
    checkpoint: Path | None = None  # None and no preset: the trained demo model
    preset: str | None = None  # an untrained, seeded model of a named size (shapes, costs, the cut)
    user_model: UserModelSpec | None = None  # the user's own model (an ONNX file or an ExportedProgram) instead of STCA
    attention: str | None = None  # "kv" | "reordered" | "auto" (the cost model's pick); None keeps the checkpoint's
    expected_candidates: int = 256  # for attention "auto": candidates per request in production
    expected_history: int | None = None  # for attention "auto": typical L; None: the served maximum
    expected_hit_rate: float = 0.0  # for attention "auto": the history row cache's share of rows (0: unique traffic)
    max_history: int | None = None  # the served maximum L; None keeps the model config's
    max_candidates: int | None = None
    opset: int = 18
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    emit: EmitConfig = field(default_factory=EmitConfig)
    engines: EngineConfig = field(default_factory=EngineConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    accept_accuracy_loss: bool = False  # write the repository even if a gate fails (recorded)

    def __post_init__(self):
        if self.user_model is None:
            self.stca()  # checks the STCA options together
        if self.user_model is not None and (self.checkpoint is not None or self.preset is not None):
            raise CompilerError("build: --onnx/--exported compile your own model; --checkpoint and --preset are STCA's")
        if self.user_model is not None and self.attention is not None:
            raise CompilerError("build: --attention chooses STCA's attention form; your own model keeps its graph")

    def stca(self) -> StcaSpec:
        """What the load stage needs of this config to load STCA."""
        return StcaSpec(self.checkpoint, self.preset, self.attention, self.max_history, self.max_candidates,
                        self.expected_history, self.expected_candidates, self.expected_hit_rate)


@dataclass(frozen=True, kw_only=True)
class BuildResult(BuildRecord):
    """What build() made: the record manifest.json holds, where it was written, and the subject it compiled (the
    gates' fp32 reference, for the demo and the benchmark)."""

    out: Path
    subject: Subject

    @property
    def record(self) -> BuildRecord:
        return BuildRecord(**{f.name: getattr(self, f.name) for f in fields(BuildRecord)})

    @property
    def model(self) -> STCA | None:
        """The STCA module, where that is what was compiled (None for the user's own model)."""
        return self.subject.model

    @property
    def config(self) -> STCAConfig:
        if self.model_config is None:
            raise CompilerError(f"{self.out}: built from your own model ({self.source.kind}), which has no STCA config")
        return self.model_config


def build(cfg: BuildConfig) -> BuildResult:
    started = time.time()
    check_replaceable(cfg.out, is_build, "an earlier build")  # fail before minutes of work, not after
    deployment, int8_form = _deployment(cfg)
    cut_precision = cfg.precision.cut_precision(deployment.cut_bytes_cost)
    subject, whole, parts = load_and_split(cfg, deployment.target, cut_precision)
    precision = least_precise(cfg.precision.encoder_precision, cfg.precision.scorer_precision, cut_precision)
    held = held_out(subject, cfg.verify)  # every graph verified below is judged on the same requests and answers
    with _calibration_set(cfg, subject) as calibration:
        attempt, kept = _convert_within_gates(cfg, subject, parts, whole, calibration, int8_form, cut_precision, precision,
                                              deployment.fuses_attention, held)
    halves, verification = attempt.made, attempt.verification
    with stage("lint") as s:
        lint_reports = lint.check(halves.graphs(), tensorrt_qdq=int8_form == "tensorrt",
                                  onnxruntime_ops=frozenset({(FUSED_DOMAIN, FUSED_OP)}) if deployment.fuses_attention else frozenset())
        ours = " but for ONNX Runtime's fused attention" if any(r.onnxruntime_nodes for r in lint_reports) else ""
        s.summary = f"TensorRT-compatible{ours}: {lint.summary(lint_reports)}"
    if not verification.passed and not cfg.accept_accuracy_loss:
        raise CompilerError(f"verify: the {precision} build misses its accuracy gate ({'; '.join(verification.failures[:3])}); "
                            "nothing was written (--accept-accuracy-loss writes it anyway)")
    row_cache, locality = _row_locality(halves.split.encoder, halves.split.scorer, subject, deployment)
    plans = _engines(cfg, subject, halves, precision, held) if deployment.target == "tensorrt" else None
    if plans:
        deployment = replace(deployment, tensorrt_profiles=len(plans.details["profiles"]))
    with atomic_directory(cfg.out, is_build, "an earlier build") as tmp, tempfile.TemporaryDirectory() as scratch:
        with stage("emit") as s:
            # the PyTorch baselines serve STCA checkpoints
            eager = subject.model is not None and any(name in PYTORCH for name in cfg.emit.baselines)
            graphs = Graphs(halves.split, halves.whole or whole, plans=plans.plans if plans else None, row_cache=row_cache,
                            checkpoint=save_checkpoint(subject.model, Path(scratch) / "checkpoint") if eager else None)
            emit(tmp, graphs, subject.contract, subject.tasks, _warmup(cfg, subject, halves), deployment)
            s.summary = f"Triton repository for target {deployment.target} -> {cfg.out}"
        placements = deployment.placements(deployment.cache_holder(row_cache))
        result = BuildResult(
            out=Path(cfg.out), subject=subject, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), source=subject.source,
            model_config=subject.model.config if subject.model is not None else None, contract=subject.contract,
            target=deployment.target, opset=opset_of(whole), precision=least_precise(halves.encoder_precision, halves.scorer_precision),
            half_precisions=(halves.encoder_precision, halves.scorer_precision), precisions=PrecisionRecord.of(
                halves.details, int8_form if "int8" in (halves.encoder_precision, halves.scorer_precision) else None, kept),
            cut=halves.split.cut, verification=verification, lint=tuple(lint_reports), history_cache=locality,
            thread_budget=ThreadBudget(deployment.cpu_threads, "plan", placements) if deployment.device == "cpu" else None,
            engines=plans.details if plans else None, accepted_accuracy_loss=bool(cfg.accept_accuracy_loss and not verification.passed),
            machine=machine(), versions=versions(), build_seconds=round(time.time() - started, 1),
            plots={"error_vs_length": report.plot_error_vs_length(tmp, verification).name},
        )
        report.write(tmp, result, subject)
        result = manifest.with_files(result, tmp)  # every file written, report.md included
        manifest.write(tmp, result.record)
    return result


def _deployment(cfg: BuildConfig) -> tuple[Deployment, str]:
    """The deployment the repository is written for, and the int8 form its kernels run fast; refused before any
    stage runs where the two cannot go together."""
    target = resolve_target(cfg.emit.target)
    if target == "tensorrt":
        require_tensorrt()
    deployment = resolve_deployment(cfg.emit, target)
    int8_form = cfg.precision.int8_form or ("cpu" if deployment.device == "cpu" else "tensorrt")
    if int8_form == "cpu" and target == "tensorrt":
        raise CompilerError("int8 form cpu: TensorRT takes symmetric int8 only (use the tensorrt form, the default there)")
    return deployment, int8_form


def _convert_within_gates(cfg: BuildConfig, subject: Subject, parts: Split, whole, calibration, int8_form: str,
                          cut_precision: str, precision: str, fuses_attention: bool, held: HeldOut) -> tuple[Attempt, tuple]:
    """Convert, narrow the cut, fuse the attention where the deployment runs it fused, verify on `held`; an int8 build
    keeps the layers that cost the ranking most in float until its gates pass (compiler.precision.int8_fallback).
    Returns the attempt kept (its `made`: the Halves) and those layers."""

    def attempt(kept, ranges: Path | None = None) -> Attempt:
        with stage("precision") as s:
            halves = convert(parts, cfg.precision, calibration, whole if FUSED in cfg.emit.baselines else None, int8_form,
                             keep_float=keep_float(kept), ranges=ranges)
            s.summary = f"encoder {halves.encoder_precision}, scorer {halves.scorer_precision}" + (
                f"; {len(kept)} layer(s) kept in float" if kept else "")
        if cut_precision == "fp16":
            halves = _narrow_cut(halves, subject)
        if fuses_attention:
            halves = _fuse_attention(halves)
        served = SplitRunner(OrtGraph(halves.split.encoder), OrtGraph(halves.split.scorer))
        return Attempt(halves, verify(subject, served.score, precision, held=held))

    if "int8" not in (cfg.precision.encoder_precision, cfg.precision.scorer_precision):
        return attempt([]), ()
    with tempfile.TemporaryDirectory(prefix="stca-int8-ranges-") as tmp:  # each float graph is calibrated once
        ranges = Path(tmp)
        return keep_float_until_the_gates_pass(partial(attempt, ranges=ranges),
                                               lambda: rank_layers(parts, cfg.precision, calibration, int8_form, subject, ranges))


def _fuse_attention(halves: Halves) -> Halves:
    """Every graph's attention as ONNX Runtime's fused kernel where it matches (compiler.passes.fused_attention): a
    float attention; an fp16 one keeps its form."""
    with stage("attention") as s:
        fused = {name: fuse_attention(graph) if graph is not None else (None, 0) for name, graph in
                 (("encoder", halves.split.encoder), ("scorer", halves.split.scorer), ("fused", halves.whole))}
        s.summary = "attention layers run fused: " + ", ".join(
            f"{name} {count}" for name, (graph, count) in fused.items() if graph is not None)
    split = replace(halves.split, encoder=fused["encoder"][0], scorer=fused["scorer"][0])
    return replace(halves, split=split, whole=fused["fused"][0])


def _warmup(cfg: BuildConfig, subject: Subject, halves: Halves) -> dict:
    """A real request's inputs and the served encoder's outputs on it: what each composing model warms up on."""
    contract = subject.contract
    request = subject.requests([min(cfg.emit.warmup_history, max(contract.max_history, 1))],
                               min(cfg.emit.warmup_candidates, contract.max_candidates), seed=7)[0]
    return with_cut(OrtGraph(halves.split.encoder), request.inputs)


def _narrow_cut(halves: Halves, subject: Subject) -> Halves:
    """The cut in fp16 (compiler.passes.cut_dtype), checked against the encoder's values on requests up to the longest
    served history, and one half padding where the contract has a padding value."""
    with stage("cut dtype") as s:
        encoder, contract = OrtGraph(halves.split.encoder), subject.contract
        longest = max(contract.max_history, 1)
        samples = [r.inputs for r in subject.requests(sorted({1, min(512, longest), longest}), 1, seed=17)]
        padding = {spec.name: spec.padding for spec in contract.inputs if spec.padding is not None}
        if padding:  # padding is part of the contract: its values must fit too
            padded = {**samples[-1], **{name: samples[-1][name].copy() for name in padding}}
            for name, value in padding.items():
                padded[name][1::2] = value
            samples.append(padded)
        narrowed = narrow_cut(halves.split, [encoder.run(r) for r in samples])
        details = {**halves.details, "cut": {"precision": "fp16", "narrowed": list(narrowed.narrowed), "kept": narrowed.kept}}
        s.summary = (f"{len(narrowed.narrowed)} of {len(narrowed.split.cut.tensors)} tensors cross in fp16"
                     + "".join(f"; {name} stays: {why}" for name, why in narrowed.kept.items()))
    return replace(halves, split=narrowed.split, details=details)


def _row_locality(encoder: onnx.ModelProto, scorer: onnx.ModelProto, subject: Subject,
                  deployment: Deployment) -> tuple[RowGraphs | None, RowLocality]:
    """The encoder's key and row graphs where its outputs are row-local (compiler.passes.row_locality), confirmed on
    requests of several lengths, one left-padded, with repeated rows sent once where the scorer reads them as a
    multiset (compiler.passes.history_multiset); and the manifest's record of it. Only the python target serves
    the cache; the analysis is recorded for every target."""
    with stage("history cache") as s:
        try:
            contract = subject.contract
            if contract.history_dim is None:
                raise row_locality.NotRowLocal("history cache: no request input has a history dim (one row per history item)")
            row_graphs = row_locality.row_graphs(encoder, contract.history_dim)
            longest = max(contract.max_history, 1)
            lengths = sorted({1, min(64, longest), min(2_000, longest)})
            requests = [r.inputs for r in subject.requests(lengths, 1, seed=23)]
            if lengths[-1] < longest:  # padding rows are rows too: they must come out of the cache as the encoder makes them
                requests.append(contract.left_pad(requests[-1], min(16, longest - lengths[-1])))
            worst = row_locality.confirm(row_graphs, encoder, requests, OrtGraph)
        except row_locality.NotRowLocal as e:
            s.summary = f"no row cache: {e}"
            return None, RowLocality(False, str(e))
        try:
            multiplicity, largest = history_multiset.multiplicity_input(scorer, row_graphs.row_specs, encoder, requests, OrtGraph)
            row_graphs, check = replace(row_graphs, multiplicity=multiplicity), f"largest difference {largest:.1e}"
        except history_multiset.NotAMultiset as e:
            check = str(e)
        served, budget_bytes = deployment.serves_row_cache(row_graphs), deployment.options.history_cache_bytes
        s.summary = (f"{len(row_graphs.cached)} outputs cached by {len(row_graphs.keys)} key columns "
                     f"({', '.join(k.source for k in row_graphs.keys)}), {row_graphs.bytes_per_row} bytes a row; "
                     + (f"served with a {budget_bytes / 2**20:.0f} MiB budget" if served else
                        "not served (python target only)" if budget_bytes else "off (--history-cache-bytes 0)")
                     + (f"; repeated rows sent once, counted in {row_graphs.multiplicity}" if row_graphs.multiplicity else
                        f"; every row sent ({check})"))
        return (row_graphs if served else None), RowLocality(True, "", row_graphs.to_dict(), worst, tuple(lengths), served,
                                                       budget_bytes if served else 0, check)


def _engines(cfg: BuildConfig, subject: Subject, halves: Halves, precision: str, held: HeldOut) -> Plans:
    """TensorRT plans of the served graphs, then the same parity check run on the plans themselves."""
    contract = subject.contract
    profiles = cfg.engines.resolved_profiles(contract.max_history, contract.max_candidates)
    with stage("engines") as s:
        graphs = {ENCODER: halves.split.encoder, SCORER: halves.split.scorer, **({FUSED: halves.whole} if halves.whole else {})}
        plans = build_plans(graphs, profiles, cfg.engines)
        s.summary = f"TensorRT {plans.details['tensorrt']} on {plans.details['gpu']['name']}: {len(plans.plans)} plans"
    runner = SplitRunner(TrtGraph(plans.plans[ENCODER], outputs_on_device=True), TrtGraph(plans.plans[SCORER]))
    check = verify(subject, runner.score, precision, held=held)
    if not check.passed and not cfg.accept_accuracy_loss:
        raise CompilerError(f"engines: the TensorRT plans miss the {precision} gate ({'; '.join(check.failures[:3])})")
    return replace(plans, details={**plans.details, "verification": check.to_dict()})


@contextlib.contextmanager
def _calibration_set(cfg: BuildConfig, subject: Subject):
    """The int8 calibration set: the one given, or one made from the subject's requests (KuaiRand-1K history lengths,
    or the user's --samples) that lives as long as the conversion."""
    p = cfg.precision
    if "int8" not in (p.encoder_precision, p.scorer_precision):
        yield None
    elif p.calibration is not None:
        yield calibrate.load(p.calibration)
    else:
        log.info("precision: no --calibration given: generating %d requests at KuaiRand-1K lengths (%s; python -m compiler "
                 "calibrate makes a reusable set, or one from your own requests)", DEFAULT_CALIBRATION_REQUESTS, subject.request_source)
        contract = subject.contract
        lengths = kuairand_lengths(DEFAULT_CALIBRATION_REQUESTS, max(contract.max_history, 1), seed=1_234)
        requests = (r.inputs for r in subject.requests(lengths, min(128, contract.max_candidates), seed=1_235))
        with tempfile.TemporaryDirectory(prefix="stca-calibration-") as tmp:
            yield calibrate.write(Path(tmp) / "set", requests, len(lengths), {"generator": subject.describe()}, contract)


def load_and_split(cfg: BuildConfig, target: str | None = None, cut_precision: str | None = None) -> tuple[Subject, onnx.ModelProto, Split]:
    """Load, export and split: (subject, the whole fp32 graph, split). `python -m compiler cut` stops here.
    `target` and `cut_precision` (the served repository's; resolved from cfg where not given) price the cut where
    the attention form is left to the cost model."""
    with stage("load") as s:
        if cfg.user_model is not None:
            subject = load_user_model(cfg.user_model, cfg.max_history, cfg.max_candidates, cfg.opset)
        else:
            target = target or resolve_target(cfg.emit.target)
            cut_precision = cut_precision or cfg.precision.cut_precision(resolve_deployment(cfg.emit, target).cut_bytes_cost)
            subject = load_stca(cfg.stca(), target, cut_precision)
        s.summary = subject.describe()
    return (subject, *cut_model(subject, cfg.opset))


def cut_model(subject: Subject, opset: int = 18) -> tuple[onnx.ModelProto, Split]:
    """The export and partition stages: (the whole graph, split) of a loaded subject."""
    contract = subject.contract
    with stage("export") as s:
        whole, on_rows = layer_norms_on_rows(subject.export(opset))
        s.summary = (f"{len(whole.graph.node)} nodes, opset {opset_of(whole)}, dynamic "
                     + ", ".join(f"{dim}<={size}" for dim, size in contract.limits.items())
                     + (f"; {on_rows} layer norms run on rows" if on_rows else ""))
    with stage("partition") as s:
        parts = split(whole, contract.request_inputs, subject.cut_names())
        mb = (parts.cut.bytes_per_request(contract.limits) or 0) / 1e6
        s.summary = (
            f"{len(parts.encoder.graph.node)} nodes -> encoder, {len(parts.scorer.graph.node)} -> scorer; "
            f"{len(parts.cut.tensors)} tensors cross, {mb:.1f} MB/request at "
            + ", ".join(f"{dim}={size}" for dim, size in contract.limits.items() if dim != contract.candidate_dim)
        )
    return whole, parts
