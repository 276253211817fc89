"""build(): the pipeline, stage after stage: load -> export -> partition -> precision -> verify -> emit.

Every stage is a function from plain artifacts to plain artifacts (compiler.<stage>); this module only
calls them in order, gates on verification, and writes the repository, manifest.json and report.md
atomically. Nothing is written when a stage or a gate fails. What is compiled is a subject
(compiler.load.subject): this package's STCA model, or the user's own ONNX file or ExportedProgram
(compiler.load.user_model); every stage after load treats both alike.
"""

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from compiler.core.artifacts import MANIFEST, atomic_directory, check_replaceable, hash_tree, sha256_file
from compiler.core.contract import Contract
from compiler.core.errors import CompilerError
from compiler.core.log import log, stage
from compiler.core.machine import machine, versions
from compiler.core.names import ENCODER, FUSED, SCORER
from compiler.core.precisions import least_precise
from compiler.load.subject import StcaSubject, Subject
from compiler.load.user_model import UserModelSpec, load_user_model, opset_of
from compiler.passes import history_cache, lint
from compiler.passes.cut_dtype import narrow_cut
from compiler.passes.history_cache import RowCachePlan
from compiler.passes.layer_norm_rows import layer_norms_on_rows
from compiler.passes.partition import Cut, Split, split
from compiler.precision import calibrate, int8_fallback
from compiler.precision.convert import PrecisionConfig, convert
from compiler.repository import report
from compiler.repository import writer as emit_stage
from compiler.repository.deployment import Deployment, EmitConfig, resolve_deployment
from compiler.repository.engines import EngineConfig, TrtGraph, build_plans, require_tensorrt, resolve_target
from compiler.repository.manifest import BUILD_FORMAT, BUILD_VERSION, cut_entries, is_build, thread_budget
from compiler.repository.writer import Graphs
from compiler.runtime.ort import OrtGraph, SplitRunner, with_cut
from compiler.stca.checkpoint import WEIGHTS_FILE, load_model, save_checkpoint, seeded_model
from compiler.stca.costmodel import best_attention, crossover_candidates, served_cost, split_cost
from compiler.stca.data import kuairand_lengths
from compiler.stca.model import STCA, STCAConfig, preset, with_attention
from compiler.stca.train import demo_checkpoint
from compiler.verify.gates import Verification, VerifyConfig, verify

DEFAULT_CALIBRATION_REQUESTS = 32
REPORT = "report.md"


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("triton_repo")
    checkpoint: Path | None = None  # None and no preset: the trained demo model
    preset: str | None = None  # an untrained, seeded model of a named size (shapes, costs, the cut)
    user_model: UserModelSpec | None = None  # the user's own model (an ONNX file or an ExportedProgram) instead of STCA
    attention: str | None = None  # "kv" | "reordered" | "auto" (the cost model's pick); None keeps the checkpoint's
    expected_candidates: int = 256  # for attention "auto": candidates per request in production
    expected_history: int | None = None  # for attention "auto": typical L; None: the served maximum
    max_history: int | None = None  # the served maximum L; None keeps the model config's
    max_candidates: int | None = None
    opset: int = 18
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    emit: EmitConfig = field(default_factory=EmitConfig)
    engines: EngineConfig = field(default_factory=EngineConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    accept_accuracy_loss: bool = False  # write the repository even if a gate fails (recorded)

    def __post_init__(self):
        if self.checkpoint is not None and self.preset is not None:
            raise CompilerError("build: give --checkpoint or --preset, not both")
        if self.user_model is not None and (self.checkpoint is not None or self.preset is not None):
            raise CompilerError("build: --onnx/--exported compile your own model; --checkpoint and --preset are STCA's")
        if self.user_model is not None and self.attention is not None:
            raise CompilerError("build: --attention chooses STCA's attention form; your own model keeps its graph")


@dataclass(frozen=True)
class BuildResult:
    """What build() made. manifest.json is this, written once (manifest()); report, demo and bench read the fields."""

    out: Path
    subject: Subject  # what was compiled, and the gates' fp32 reference (compiler.load.subject)
    target: str  # python | onnxruntime | tensorrt
    opset: int
    precision: str  # the less precise half's
    half_precisions: tuple[str, str]  # (encoder, scorer)
    precisions: dict  # per half and the cut: what the precision stage converted, kept and why
    cut: Cut  # the tensors crossing the split, with the dtypes they are served in
    placement: dict  # node -> why it is on its side of the cut
    contract: Contract
    verification: Verification
    lint: tuple[lint.LintReport, ...]
    history_cache: dict  # the encoder's row locality: the row cache's keys and what it holds, or why it has none
    thread_budget: dict | None  # CPU targets: the placements the configs hold (compiler.repository.budget)
    engines: dict | None  # tensorrt: the plans' details and their own verification
    accepted_accuracy_loss: bool
    machine: dict
    versions: dict
    created: str
    build_seconds: float
    plots: dict = field(default_factory=dict)  # name -> file in out/
    files: dict = field(default_factory=dict)  # path -> sha256 of every file of the build but manifest.json

    @property
    def model(self) -> STCA | None:
        """The STCA module, where that is what was compiled (None for the user's own model)."""
        return self.subject.model

    @property
    def config(self) -> STCAConfig:
        if self.model is None:
            raise CompilerError(f"{self.out}: built from your own model ({self.source['kind']}), which has no STCA config")
        return self.model.config

    @property
    def source(self) -> dict:
        """Where the model came from: {"kind": "demo" | "checkpoint" | "seeded" | "onnx" | "exported", ...}."""
        return self.subject.source

    @property
    def manifest(self) -> dict:
        contract = self.contract
        return {
            "format": BUILD_FORMAT,
            "version": BUILD_VERSION,
            "created": self.created,
            "build_seconds": self.build_seconds,
            "precision": self.precision,
            "precisions": self.precisions,
            "target": self.target,
            **({"model_config": self.config.to_dict()} if self.model is not None else {}),
            "source": self.source,
            "versions": self.versions,
            "machine": self.machine,
            "export": {"opset": self.opset, "dynamic_dims": {dim: [1, size] for dim, size in contract.limits.items()}},
            "contract": contract.to_dict(),
            **cut_entries(self.cut, contract),
            "placement": self.placement,
            "verification": self.verification.to_dict(),
            "history_cache": self.history_cache,
            "accepted_accuracy_loss": self.accepted_accuracy_loss,
            **({"thread_budget": self.thread_budget} if self.thread_budget else {}),
            "lint": [{"graph": r.graph, "nodes": r.nodes, "qdq_pairs": r.qdq_pairs, "ok": r.ok} for r in self.lint],
            **({"engines": self.engines} if self.engines else {}),
            "plots": self.plots,
            "files": self.files,
        }


def build(cfg: BuildConfig) -> BuildResult:
    started = time.time()
    check_replaceable(cfg.out, is_build, "an earlier build")  # fail before minutes of work, not after
    target = resolve_target(cfg.emit.target)
    if target == "tensorrt":
        require_tensorrt()
    deployment = resolve_deployment(cfg.emit, target)
    int8_form = cfg.precision.int8_form or ("cpu" if deployment.device == "cpu" else "tensorrt")  # what the served kernels run fast
    if int8_form == "cpu" and target == "tensorrt":
        raise CompilerError("int8 form cpu: TensorRT takes symmetric int8 only (use the tensorrt form, the default there)")
    subject, whole, parts = plan_cut(cfg)
    contract = subject.contract
    cut_precision = cfg.precision.cut_precision(deployment.cut_bytes_cost)
    precision = least_precise(cfg.precision.encoder_precision, cfg.precision.scorer_precision, cut_precision)
    with _calibration_set(cfg, subject) as calibration:
        halves, cut, verification, kept_float = _within_gates(cfg, subject, parts, whole, calibration, int8_form, precision,
                                                              cut_precision)
    with stage("lint") as s:
        lint_reports = lint.check(halves.graphs(), tensorrt_qdq=int8_form == "tensorrt")
        s.summary = f"TensorRT-compatible: {lint.summary(lint_reports)}"
    if not verification.passed and not cfg.accept_accuracy_loss:
        raise CompilerError(
            f"verify: the {precision} build misses its accuracy gate ({'; '.join(verification.failures[:3])}); "
            "nothing was written (--accept-accuracy-loss writes it anyway)"
        )
    row_cache, row_cache_record = _history_cache(halves.encoder, subject, deployment)
    plans = _engines(cfg, subject, halves, precision) if target == "tensorrt" else None
    warmup_request = subject.requests([min(cfg.emit.warmup_history, max(contract.max_history, 1))],
                                      min(cfg.emit.warmup_candidates, contract.max_candidates), seed=7)[0]
    warmup = with_cut(OrtGraph(halves.encoder), warmup_request.inputs)
    if plans:
        deployment = replace(deployment, tensorrt_profiles=len(plans.details["profiles"]))
    with atomic_directory(cfg.out, is_build, "an earlier build") as tmp, tempfile.TemporaryDirectory() as scratch:
        with stage("emit") as s:
            eager = cfg.emit.baselines and subject.model is not None  # the PyTorch-eager baseline serves STCA checkpoints
            checkpoint = save_checkpoint(subject.model, Path(scratch) / "checkpoint") if eager else None
            graphs = Graphs(halves.encoder, halves.scorer, halves.whole or whole, plans=plans.plans if plans else None,
                            checkpoint=checkpoint, row_cache=row_cache)
            emit_stage.emit(tmp, graphs, contract, subject.tasks, warmup, deployment)
            s.summary = f"Triton repository for target {target} -> {cfg.out}"
        result = BuildResult(
            out=Path(cfg.out), subject=subject, target=target, opset=opset_of(whole),
            precision=least_precise(halves.encoder_precision, halves.scorer_precision),
            half_precisions=(halves.encoder_precision, halves.scorer_precision),
            precisions={**halves.details, **({"int8_form": int8_form, "int8_kept_float": kept_float}
                                             if "int8" in (halves.encoder_precision, halves.scorer_precision) else {})},
            cut=cut, placement=dict(cut.placement), contract=contract, verification=verification, lint=tuple(lint_reports),
            history_cache=row_cache_record,
            thread_budget=thread_budget(deployment.cpu_threads, deployment.placements(deployment.cache_holder(row_cache)), "plan")
            if deployment.device == "cpu" else None,
            engines=plans.details if plans else None,
            accepted_accuracy_loss=bool(cfg.accept_accuracy_loss and not verification.passed),
            machine=machine(), versions=versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            build_seconds=round(time.time() - started, 1),
            plots={"error_vs_length": report.plot_error_vs_length(tmp, verification).name},
        )
        report.write(tmp, result)
        result = replace(result, files=hash_tree(tmp))  # every file written, report.md included
        (tmp / MANIFEST).write_text(json.dumps(result.manifest, indent=2) + "\n")
    return result


def _within_gates(cfg: BuildConfig, subject: Subject, parts, whole, calibration, int8_form: str, precision: str,
                  cut_precision: str):
    """Convert, narrow the cut, verify; where an int8 build misses its gates, or passes within
    int8_fallback.MARGIN of one, keep the layers that cost the ranking most in float (compiler.precision.int8_fallback),
    one more each round, and verify again. Returns (halves, cut, verification, the layers kept in float with
    why): the last round's, or where a round that passed was followed by ones that did not, that one's."""
    kept, ranking, passing, why = [], None, None, []
    while True:
        with stage("precision") as s:
            halves = convert(parts, cfg.precision, calibration, whole if cfg.emit.baselines else None, int8_form,
                             keep_float=int8_fallback.keep_float(kept))
            s.summary = f"encoder {halves.encoder_precision}, scorer {halves.scorer_precision}" + (
                f"; {len(kept)} layer(s) kept in float" if kept else "")
        cut = parts.cut
        if cut_precision == "fp16":
            halves, cut = _narrow_cut(halves, cut, subject)
        verification = verify(subject, SplitRunner(OrtGraph(halves.encoder), OrtGraph(halves.scorer)).score, precision, cfg.verify)
        if "int8" not in (halves.encoder_precision, halves.scorer_precision):
            break
        if verification.passed:
            passing = (halves, cut, verification, list(kept), list(why))
        thin = int8_fallback.thin_cases(verification)
        if (verification.passed and not thin) or len(kept) >= int8_fallback.MAX_KEPT_FLOAT:
            break
        ranking = ranking or int8_fallback.rank_layers(parts, cfg.precision, calibration, int8_form, subject)
        remaining = [layer for layer in ranking if layer not in kept]
        if not remaining:
            break
        reason = verification.failures[0] if not verification.passed else f"passes, but within {int8_fallback.MARGIN} of the gate: {thin[0]}"
        kept.append(remaining[0])
        why.append(f"kept after round {len(kept)} ({reason}): of the layers left, it costs the ranking most when quantized alone")
        log.info("int8: %s; keeping %s %s in float (alone it costs 1 - tau %.4f, %.0f%% of the %s's int8 GEMM work) and "
                 "verifying again", reason, kept[-1].half, kept[-1].node, kept[-1].tau_deficit, 100 * kept[-1].weight_share, kept[-1].half)
    if passing is not None and not verification.passed:
        halves, cut, verification, kept, why = passing
    return halves, cut, verification, [{**layer.to_dict(), "why": w} for layer, w in zip(kept, why)]


def _narrow_cut(halves, cut, subject: Subject):
    """The cut in fp16 (compiler.passes.cut_dtype), checked against the encoder's values on requests up to the longest
    served history, and one half padding where the contract has a padding value; returns the rewritten halves
    and the cut with its new dtypes."""
    with stage("cut dtype") as s:
        encoder, contract = OrtGraph(halves.encoder), subject.contract
        longest = max(contract.max_history, 1)
        samples = [r.inputs for r in subject.requests(sorted({1, min(512, longest), longest}), 1, seed=17)]
        padding = {spec.name: spec.padding for spec in contract.inputs if spec.padding is not None}
        if padding:  # padding is part of the contract: its values must fit too
            padded = {**samples[-1], **{name: samples[-1][name].copy() for name in padding}}
            for name, value in padding.items():
                padded[name][1::2] = value
            samples.append(padded)
        narrowed = narrow_cut(halves.encoder, halves.scorer, [encoder.run(r) for r in samples])
        details = {**halves.details, "cut": {"precision": "fp16", "narrowed": list(narrowed.narrowed), "kept": narrowed.kept}}
        halves = replace(halves, encoder=narrowed.encoder, scorer=narrowed.scorer, details=details)
        cut = replace(cut, tensors=tuple(replace(t, dtype="float16") if t.name in narrowed.narrowed else t for t in cut.tensors))
        s.summary = (f"{len(narrowed.narrowed)} of {len(cut.tensors)} tensors cross in fp16"
                     + "".join(f"; {name} stays: {why}" for name, why in narrowed.kept.items()))
    return halves, cut


def _history_cache(encoder, subject: Subject, deployment: Deployment) -> tuple[RowCachePlan | None, dict]:
    """The encoder's key and row graphs where its outputs are row-local (compiler.passes.history_cache), confirmed on
    requests of several lengths, one left-padded; and the manifest's record of it. Only the python target serves
    the cache; the analysis is recorded for every target."""
    with stage("history cache") as s:
        try:
            contract = subject.contract
            if contract.history_dim is None:
                raise history_cache.NotRowLocal("history cache: no request input has a history dim (one row per history item)")
            plan = history_cache.plan(encoder, contract.history_dim)
            longest = max(contract.max_history, 1)
            lengths = sorted({1, min(64, longest), min(2_000, longest)})
            requests = [r.inputs for r in subject.requests(lengths, 1, seed=23)]
            if lengths[-1] < longest:  # padding rows are rows too: they must come out of the cache as the encoder makes them
                requests.append(contract.left_pad(requests[-1], min(16, longest - lengths[-1])))
            worst = history_cache.confirm(plan, encoder, requests, OrtGraph)
        except history_cache.NotRowLocal as e:
            s.summary = f"no row cache: {e}"
            return None, {"row_local": False, "why": str(e), "served": False}
        served, budget_bytes = deployment.serves_row_cache(plan), deployment.options.history_cache_bytes
        s.summary = (f"{len(plan.cached)} outputs cached by {len(plan.keys)} key columns "
                     f"({', '.join(k.source for k in plan.keys)}), {plan.bytes_per_row} bytes a row; "
                     + (f"served with a {budget_bytes / 2**20:.0f} MiB budget" if served else
                        "not served (python target only)" if budget_bytes else "off (--history-cache-bytes 0)"))
        return (plan if served else None), {"row_local": True, **plan.to_dict(), "confirmed_max_abs_difference": worst,
                                            "confirmed_at_lengths": lengths, "served": served, "budget_bytes": budget_bytes if served else 0}


def _engines(cfg: BuildConfig, subject: Subject, halves, precision: str):
    """TensorRT plans of the served graphs, then the same parity check run on the plans themselves."""
    contract = subject.contract
    profiles = cfg.engines.resolved_profiles(contract.max_history, contract.max_candidates)
    with stage("engines") as s:
        graphs = {ENCODER: halves.encoder, SCORER: halves.scorer, **({FUSED: halves.whole} if halves.whole else {})}
        plans = build_plans(graphs, profiles, cfg.engines)
        s.summary = f"TensorRT {plans.details['tensorrt']} on {plans.details['gpu']['name']}: {len(plans.plans)} plans"
    runner = SplitRunner(TrtGraph(plans.plans[ENCODER], outputs_on_device=True), TrtGraph(plans.plans[SCORER]))
    check = verify(subject, runner.score, precision, cfg.verify)
    plans.details["verification"] = check.to_dict()
    if not check.passed and not cfg.accept_accuracy_loss:
        raise CompilerError(f"engines: the TensorRT plans miss the {precision} gate ({'; '.join(check.failures[:3])})")
    return plans


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


def plan_cut(cfg: BuildConfig) -> tuple[Subject, onnx.ModelProto, Split]:
    """Load, export and split: (subject, the whole fp32 graph, split). `python -m compiler cut` stops here."""
    with stage("load") as s:
        subject = load_user_model(cfg.user_model, cfg.max_history, cfg.max_candidates, cfg.opset) if cfg.user_model else _load(cfg)
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


def _load(cfg: BuildConfig) -> StcaSubject:
    overrides = {
        k: v
        for k, v in (("attention", cfg.attention), ("max_history", cfg.max_history), ("max_candidates", cfg.max_candidates))
        if v is not None and v != "auto"
    }
    model, source = _load_with(cfg, overrides)
    if cfg.attention == "auto":
        c = model.config
        L, N = cfg.expected_history or c.max_history, cfg.expected_candidates
        target = resolve_target(cfg.emit.target)
        cut = cfg.precision.cut_precision(resolve_deployment(cfg.emit, target).cut_bytes_cost)
        form = best_attention(c, L, N, target, cut)
        flops = {f: split_cost(c, L, N, f).flops for f in ("kv", "reordered")}
        cost = {f: served_cost(c, L, N, f, target, cut) for f in ("kv", "reordered")}
        log.info("attention auto: %s (at L=%d, N=%d on target %s: kv %.3g FLOPs, reordered %.3g; with the %s cut priced: "
                 "kv %.3g, reordered %.3g; kv wins above N=%.0f)", form, L, N, target, flops["kv"], flops["reordered"], cut,
                 cost["kv"], cost["reordered"], crossover_candidates(c, L, target, cut))
        source["attention_choice"] = {"chosen": form, "history": L, "candidates": N, "target": target, "cut_precision": cut,
                                      "flops": flops, "flops_with_cut_priced": cost}
        model = with_attention(model, form)
    return StcaSubject(model, source)


def _load_with(cfg: BuildConfig, overrides: dict) -> tuple[STCA, dict]:
    if cfg.preset is not None:
        return seeded_model(preset(cfg.preset, **overrides)), {"kind": "seeded", "preset": cfg.preset}
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint)
        kind = "checkpoint"
    else:
        path, kind = demo_checkpoint(), "demo"  # trains the demo model once, then reads the cache
    model = load_model(path, **overrides)
    return model, {"kind": kind, "path": str(path), "sha256": sha256_file(path / WEIGHTS_FILE)}
