"""Bench stage: perf_analyzer against served repositories; request-level sharing against the baselines.

    run(BenchConfig(name="demo-cpu")) -> benchmarks/results/demo-cpu/{results.json, results.md, *.png}

One run builds the repositories it needs (fp32 and int8 with --baselines, and fp32 with Triton's
response cache on the history encoder), serves each on the embedded tritonserver, and drives
perf_analyzer (the binary tritonclient[all] installs) with input files made from synthetic requests:
a fixed (L, N) sweep and a mixed load whose L follows KuaiRand-1K. Every model of a repository is measured
on the same server with the same input files: the split ensemble `stca`, the unsplit `stca_fused`, the
point-wise `stca_naive`, PyTorch eager `stca_torch` and torch.compile's `stca_inductor`, which compiles while its
server starts (those seconds are recorded apart, results.json's "compile", never in a cell). A cell that would take
longer than the budget on this machine is dropped with its estimate, never silently. FLOPs per request come from
compiler.stca.costmodel; the machine's peak is a large matmul measured in this process.
"""

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from compiler.build import BuildConfig, build, cut_model
from compiler.core.contract import REQUEST_INPUTS
from compiler.core.errors import CompilerError
from compiler.core.log import Progress, log, stage
from compiler.core.machine import machine, versions
from compiler.core.names import BASELINES, COMPOSING, ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, PYTORCH, SPLIT
from compiler.load.subject import Source, StcaSubject, Subject
from compiler.load.user_model import UserModelSpec
from compiler.measure import bench_report
from compiler.measure.bench_repeated import RepeatedConfig, repeated_users, served_repositories, uncached_copy
from compiler.measure.perf import UnstableMeasurement, load_label, perf, write_input_file
from compiler.measure.tune import TuneConfig, tune
from compiler.precision.convert import PrecisionConfig
from compiler.repository.deployment import EmitConfig
from compiler.repository.reader import composing
from compiler.runtime.inductor import COMPILE_SECONDS_METRIC, COMPILED_GRAPHS_METRIC
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.costmodel import best_attention, gemm_peaks, naive_cost, peaks_text, split_cost
from compiler.stca.data import kuairand_lengths, sample_requests
from compiler.stca.model import STCAConfig, with_attention
from compiler.verify.gates import VerifyConfig

# grid: every model x (L, N) x the mixed load, per precision; response_cache: Triton's cache on repeated histories;
# attention: the cost model's form against both measured; repeated_users: the history row cache (compiler.measure.bench_repeated)
SUITES = ("grid", "response_cache", "attention", "repeated_users")


@dataclass(frozen=True)
class BenchConfig:
    name: str = "demo-cpu"
    checkpoint: Path | None = None  # None: the demo model (or `preset`)
    preset: str | None = None  # an untrained, seeded model of a named size instead (e.g. medium)
    user_model: UserModelSpec | None = None  # the user's own model instead of STCA: the grid suite, on its own requests
    tune: bool = True  # measure each repository's CPU thread budget first (compiler.measure.tune), so each model runs at its best
    precisions: tuple[str, ...] = ("fp32", "int8")
    models: tuple[str, ...] = (ENSEMBLE, *BASELINES)
    histories: tuple[int, ...] = (512, 2_000, 10_000)
    candidates: tuple[int, ...] = (32, 128, 512)
    concurrency: tuple[int, ...] = (1, 2, 4)
    mixed_candidates: int = 128  # the KuaiRand-length load
    requests_per_input: int = 4  # distinct requests in each perf_analyzer input file (mixed: x4)
    window_requests: int = 12  # perf_analyzer count_windows: requests per measurement window (doubled where unstable)
    stability_percentage: int = 50  # how far perf_analyzer's last 3 windows may differ
    cell_budget_s: float = 150.0  # a cell estimated to take longer is dropped, with its estimate
    cache_users: int = 4  # response-cache load: users, each sending cache_repeats requests with one history
    cache_repeats: int = 8
    protocol: str = "http"
    max_history: int | None = None  # None: the model's (10,000)
    cut_dtype: str | None = None  # the builds' --cut-dtype (None: as build decides, compiler.precision.convert.PrecisionConfig.cut_precision)
    verify: VerifyConfig = field(default_factory=lambda: VerifyConfig(auc_requests=16))  # each build's gates
    out: Path = Path("benchmarks/results")
    work: Path | None = None  # where repositories are built; None: a temporary directory
    suites: tuple[str, ...] = SUITES
    repeated: RepeatedConfig = field(default_factory=RepeatedConfig)  # the repeated_users suite's traffic

    def __post_init__(self):
        unknown = sorted(set(self.suites) - set(SUITES))
        if unknown:
            raise CompilerError(f"bench: unknown suite(s) {unknown}; choose from {list(SUITES)}")

    def perf_settings(self) -> dict:
        """perf()'s measurement settings under this config."""
        return {"window_requests": self.window_requests, "protocol": self.protocol,
                "stability_percentage": self.stability_percentage, "timeout_s": max(600.0, self.cell_budget_s * 4)}


@dataclass
class Cell:
    precision: str
    model: str
    load: str  # load_label(L, N), or "mixed N=128"
    history: float  # L, or the mean L of the mixed load
    candidates: int
    flops_per_request: float | None  # the cost model's (STCA); None for the user's own model
    rows: list = field(default_factory=list)  # one dict per concurrency level (perf_analyzer's CSV, parsed)
    dropped: str = ""
    unstable: list = field(default_factory=list)  # concurrency levels perf_analyzer could not measure stably


def bench_server(url: str, metrics_url: str, subject: Subject, precision: str, cfg: BenchConfig, work: Path,
                 served: dict) -> list[Cell]:
    """Every model x every load, on one server with the same input files (the subject's requests: STCA's synthetic
    world, or the user's samples or generated ones); each perf_analyzer run also records where its requests' time went
    in each composing model (server_stats; `served`: compiler.repository.writer.composing of the repository), and in stca_split,
    in each half. FLOPs per request come from the cost model, for STCA only."""
    contract = subject.contract
    loads = [(load_label(L, N), [L] * cfg.requests_per_input, N) for L in cfg.histories for N in cfg.candidates]
    mixed = kuairand_lengths(4 * cfg.requests_per_input, max(contract.max_history, 1), seed=3)
    loads.append((f"mixed N={cfg.mixed_candidates}", list(mixed), cfg.mixed_candidates))
    cells = []
    progress = Progress(f"{precision} cell", len(loads) * len(cfg.models), every_s=1.0)
    for index, (label, lengths, N) in enumerate(loads):
        requests = [r.inputs for r in subject.requests(lengths, N, seed=100 + index)]
        inputs = write_input_file(work / f"{precision}-{label.replace(' ', '_')}.json", requests)
        for model in cfg.models:
            cost = naive_cost if model == NAIVE else split_cost
            flops = float(np.mean([cost(subject.model.config, L, N).flops for L in lengths])) if subject.model is not None else None
            cell = Cell(precision, model, label, float(np.mean(lengths)), N, flops)
            longest = max(requests, key=lambda r: sum(v.size for v in r.values()))
            seconds = _probe(url, model, longest, cfg)  # the slowest request of the load, so the estimate is an upper bound
            estimate = seconds * cfg.window_requests * 3 * len(cfg.concurrency)
            if estimate > cfg.cell_budget_s:
                cell.dropped = (f"one request takes {seconds:.2f} s: {len(cfg.concurrency)} concurrency levels x 3 windows x "
                                f"{cfg.window_requests} requests would take ~{estimate / 60:.0f} min on this machine")
            else:
                for concurrency in cfg.concurrency:
                    before = server_stats.snapshot(url) if cfg.protocol == "http" else None
                    halves = server_stats.split_half_ms(metrics_url) if before is not None and served[model] == (SPLIT,) else None
                    try:
                        row = perf(model, url, inputs, concurrency, work / "last.csv", **cfg.perf_settings())
                    except UnstableMeasurement as e:
                        cell.unstable.append(str(e))
                        continue
                    if before is not None:
                        stages = server_stats.since(url, before, served[model])
                        row["stages"] = [asdict(t) for t in stages]
                        if halves is not None and stages:
                            row["split_halves_ms"] = server_stats.halves_since(metrics_url, halves, stages[0].requests)
                    cell.rows.append(row)
            cells.append(cell)
            progress.advance(note=f"{model} {label}: " + (f"{max(r['throughput'] for r in cell.rows):.1f} req/s" if cell.rows else "dropped"))
    return cells


def _probe(url: str, model: str, request: dict, cfg: BenchConfig) -> float:
    """Seconds one request takes (after one warm-up), to decide whether a cell fits the budget."""
    client = ScoringClient(url, cfg.protocol, model=model, timeout_s=max(600.0, cfg.cell_budget_s))
    try:
        client.score(request)
        start = time.perf_counter()
        client.score(request)
        return time.perf_counter() - start
    finally:
        client.close()


def cache_experiment(cached_url: str, plain_url: str, metrics_url: str, config: STCAConfig, cfg: BenchConfig, work: Path) -> dict:
    """Each user sends several requests with one history and fresh candidates: the encoder's response cache
    should answer all but each user's first. The hit rate is measured on one cold pass (Triton's metrics);
    throughput under perf_analyzer, which cycles through the requests, so its cache is warm."""
    requests = []
    for user in sample_requests(config, [config.max_history] * cfg.cache_users, seed=5, n_candidates=cfg.mixed_candidates):
        history = {k: v for k, v in user.inputs.items() if k in REQUEST_INPUTS}
        for repeat in sample_requests(config, [1] * cfg.cache_repeats, seed=len(requests) + 1, n_candidates=cfg.mixed_candidates):
            requests.append({**repeat.inputs, **history})
    before = _cache_counts(metrics_url)
    client = ScoringClient(cached_url, "http")
    for request in requests:
        client.score(request)
    client.close()
    after = _cache_counts(metrics_url)
    inputs = write_input_file(work / "cache.json", requests)
    cached = perf(ENSEMBLE, cached_url, inputs, 1, work / "cache.csv", **cfg.perf_settings())
    plain = perf(ENSEMBLE, plain_url, inputs, 1, work / "plain.csv", **cfg.perf_settings())
    hits, misses = after[0] - before[0], after[1] - before[1]
    return {"users": cfg.cache_users, "requests_per_user": cfg.cache_repeats, "history": config.max_history,
            "candidates": cfg.mixed_candidates, "hits": hits, "misses": misses, "hit_rate": hits / max(hits + misses, 1),
            "expected_hit_rate": 1 - 1 / cfg.cache_repeats,
            "throughput_cached": cached["throughput"], "throughput_uncached": plain["throughput"],
            "p50_ms_cached": cached["p50_ms"], "p50_ms_uncached": plain["p50_ms"],
            "speedup": cached["throughput"] / plain["throughput"]}


def _cache_counts(metrics_url: str) -> tuple[float, float]:
    """(hits, misses) of the history encoder's response cache, from Triton's Prometheus metrics."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    counts = {"nv_cache_num_hits_per_model": 0.0, "nv_cache_num_misses_per_model": 0.0}
    for line in text.splitlines():
        for name in counts:
            if line.startswith(name) and f'model="{ENCODER}"' in line:
                counts[name] += float(line.rsplit(" ", 1)[1])
    return counts["nv_cache_num_hits_per_model"], counts["nv_cache_num_misses_per_model"]


def attention_check(base, history: int, candidates: tuple[int, ...], repeats: int = 7) -> list[dict]:
    """Time both attention forms of the same weights (`base`, an STCA model; split graphs in ONNX Runtime) and
    compare the faster one with the cost model's pick, at each N."""

    config, runners = base.config, {}
    for form in ("kv", "reordered"):
        _, parts = cut_model(StcaSubject(with_attention(base, form), Source("seeded")))
        runners[form] = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    rows = []
    for N in candidates:
        request = next(sample_requests(config, [history], seed=N, n_candidates=N)).inputs
        ms = {}
        for form, runner in runners.items():
            runner.score(request)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.score(request)
                times.append(time.perf_counter() - start)
            ms[form] = 1e3 * float(np.median(times))
        predicted = best_attention(config, history, N)
        measured = min(ms, key=ms.get)
        rows.append({"history": history, "candidates": N, "kv_ms": ms["kv"], "reordered_ms": ms["reordered"],
                     "predicted": predicted, "measured": measured, "agree": predicted == measured,
                     "kv_flops": split_cost(config, history, N, "kv").flops, "reordered_flops": split_cost(config, history, N, "reordered").flops})
    return rows


def run(cfg: BenchConfig) -> Path:
    """Build, serve and measure; write benchmarks/results/<name>/ and return that directory."""

    out = Path(cfg.out) / cfg.name
    if cfg.user_model is not None:  # the other suites need STCA itself (its world's users, its attention forms)
        stca_only = [s for s in cfg.suites if s != "grid"]
        if stca_only:
            log.info("bench: %s measure STCA only; your model gets the grid suite", ", ".join(stca_only))
        # no PyTorch baseline either, eager or compiled: the user's model is an ONNX file or an exported program, not STCA
        cfg = replace(cfg, suites=("grid",) if "grid" in cfg.suites else (), models=tuple(m for m in cfg.models if m not in PYTORCH))
    with tempfile.TemporaryDirectory(prefix="stca-bench-") as scratch:
        work = Path(cfg.work) if cfg.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        peaks = _machine_peak("before")

        def repo(label: str, precision: str, tuned: bool = True, **emit):
            """A built (and tuned) repository, and its thread budget as measured."""
            result = build(BuildConfig(out=work / f"repo-{label}", checkpoint=cfg.checkpoint, preset=cfg.preset, user_model=cfg.user_model,
                                       max_history=cfg.max_history, precision=PrecisionConfig(precision, cut=cfg.cut_dtype), emit=EmitConfig(**emit),
                                       verify=cfg.verify, accept_accuracy_loss=True))  # a missed gate is recorded, not a lost run
            if not (cfg.tune and tuned):
                return result, result.thread_budget.to_dict() if result.thread_budget else None
            # half-length windows: tune only ranks four budgets, and the benchmark then measures the chosen one in full
            tuning = tune(TuneConfig(repo=result.out, concurrency=cfg.concurrency, window_requests=max(4, cfg.window_requests // 2),
                                     protocol=cfg.protocol))
            return result, tuning.thread_budget.to_dict()

        def server(path: Path) -> TritonServer:
            return TritonServer(ServerConfig.on_free_ports(path))

        cells, built, budgets, compiled = [], {}, {}, {}
        for precision in cfg.precisions:
            # no row cache: perf_analyzer cycles through a few requests, so the cache would serve their rows, not compute them
            built[precision], budgets[precision] = repo(precision, precision, baselines=baselines_of(cfg.models), history_cache_bytes=0)
            if "grid" not in cfg.suites:
                continue
            with server(built[precision].out) as triton:
                url = triton.cfg.http_url if cfg.protocol == "http" else triton.cfg.grpc_url
                with stage(f"bench: {precision} repository, {len(cfg.models)} models") as s:
                    cells += bench_server(url, triton.cfg.metrics_url, built[precision].subject, precision, cfg, work,
                                          composing(built[precision].out))
                    s.summary = f"{sum(1 for c in cells if c.rows)} cells measured, {sum(1 for c in cells if c.dropped)} dropped"
                if INDUCTOR in cfg.models:
                    compiled[precision] = torch_compile(triton.cfg.metrics_url)
        first = built[cfg.precisions[0]]
        cache, attention, repeated = None, [], None
        if "response_cache" in cfg.suites:
            cached, _ = repo("cache", cfg.precisions[0], tuned=False, response_cache=True, history_cache_bytes=0)
            plain, _ = repo("plain", cfg.precisions[0], tuned=False, history_cache_bytes=0, split_processes=2)
            with stage("bench: response cache on the history encoder") as s, server(cached.out) as cache_server, server(plain.out) as plain_server:
                cache = cache_experiment(cache_server.cfg.http_url, plain_server.cfg.http_url, cache_server.cfg.metrics_url, first.config, cfg, work)
                s.summary = f"hit rate {cache['hit_rate']:.2f}, {cache['speedup']:.2f}x throughput"
        if "attention" in cfg.suites:
            with stage("bench: attention form, cost model against measurement") as s:
                attention = attention_check(first.model, min(2_000, first.config.max_history), (4, 8, 16, 32, 64, 128, 512))
                s.summary = f"{sum(r['agree'] for r in attention)}/{len(attention)} agree"
        if "repeated_users" in cfg.suites:
            base = cfg.precisions[0]
            one, budgets[f"{base} with the row cache, one process"] = repo("row-cache-one-process", base)
            at_encoder, budgets[f"{base} with the row cache in the encoder"] = repo("row-cache", base, baselines=(FUSED,), split_processes=2)
            uncached = uncached_copy(at_encoder.out, work / "repo-no-row-cache")
            if cfg.tune:  # without its cache the encoder does more work: its own best budget, as every model gets
                budgets[f"{base} without the row cache"] = tune(TuneConfig(
                    repo=uncached, concurrency=cfg.concurrency, window_requests=max(4, cfg.window_requests // 2), protocol=cfg.protocol)).thread_budget.to_dict()
            at_scorer, budgets[f"{base} with the row cache in the scorer"] = repo("row-cache-at-scorer", base, history_cache_at="scorer")
            repeated = repeated_users(served_repositories(one.out, at_encoder.out, at_scorer.out, uncached, work), first.config, cfg.repeated)
        # a shared VM's speed drifts (90 to 190 GFLOP/s within an hour): the peak is measured again once the cells are
        # in, and the larger of the two is the ceiling every cell's "% of peak" is over
        peaks_after = _machine_peak("after") if cells else {}
        peak = max([*peaks.values(), *peaks_after.values()])
        for cell in cells:
            for row in cell.rows:
                row["fraction_of_peak"] = row["throughput"] * cell.flops_per_request / peak if cell.flops_per_request is not None else None
    results = {
        "name": cfg.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": _jsonable(asdict(cfg)),
        "machine": machine().to_dict(), "versions": versions(), "gemm_peak_flops": peak, "gemm_peaks": peaks,
        "gemm_peaks_after": peaks_after,
        **({"model_config": first.config.to_dict()} if first.model is not None else {"model": first.source.to_dict()}),
        "contract": first.contract.to_dict(),
        "cells": [asdict(c) for c in cells], "response_cache": cache, "attention_check": attention, "repeated_users": repeated,
        "thread_budgets": budgets, "compile": compiled,
        "gates": {p: {"passed": built[p].verification.passed, "failures": list(built[p].verification.failures)} for p in cfg.precisions},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    bench_report.write(out, results)
    return out


def _machine_peak(when: str) -> dict[str, float]:
    """costmodel.gemm_peaks, as a stage of the run ("before" or "after" the cells)."""
    with stage(f"bench: machine peak, {when}") as s:
        peaks = gemm_peaks()
        s.summary = f"{max(peaks.values()) / 1e9:.0f} GFLOP/s (fp32 matmul 2048^3, best of {peaks_text(peaks)})"
    return peaks


def baselines_of(models: tuple[str, ...]) -> tuple[str, ...]:
    """The baselines a repository needs to serve `models`: each one's composing models (stca_naive calls stca_fused)."""
    return tuple(b for b in BASELINES if any(b in COMPOSING[m] for m in models))


def torch_compile(metrics_url: str) -> dict:
    """What compiling cost each torch.compile'd model of a server (compiler.runtime.inductor), apart from its throughput:
    {model: {"warmup_s": the warm-up's seconds at load, compiling included, "graphs": graphs compiled by now}}, read after
    the grid, so graphs above the warm-up's (2) say that some load's shape compiled a graph while it was measured."""
    seconds = server_stats.model_gauge(metrics_url, COMPILE_SECONDS_METRIC)
    graphs = server_stats.model_gauge(metrics_url, COMPILED_GRAPHS_METRIC)
    return {model: {"warmup_s": s, "graphs": int(graphs.get(model, 0))} for model, s in sorted(seconds.items())}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
