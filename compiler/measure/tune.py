"""Tune stage: measure the candidate CPU thread budgets of a built repository and keep the best one per model.

    tune(TuneConfig(repo=Path("triton_repo"))) -> TuneResult

The build writes an unmeasured budget (compiler.repository.budget.default_placements). Here each candidate budget
(compiler.repository.budget.candidates) is written into a copy of the repository, served on the embedded
tritonserver, and perf_analyzer measures the ensemble (and the fused baseline, where the repository has
it) on one load at each concurrency. Each tuned model keeps the budget under which it served the most
requests per second (best over the concurrency levels, as the benchmark ranks them), so the comparison
between the split and the unsplit graph is between each one's best. The chosen configs are written into
the repository, and the whole sweep into manifest.json (its file hashes updated).
Triton Model Analyzer does the same search more generally, but it drives its own tritonserver (a
container or a binary on PATH) and does not start the embedded one with the Python-backend stub this
package serves with; the sweep here is small enough to run directly.
"""

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.log import Progress, stage
from compiler.core.names import ENCODER, ENSEMBLE, FUSED, SCORER, SPLIT, VALIDATOR
from compiler.measure.perf import perf, write_input_file
from compiler.repository import budget, manifest
from compiler.repository.budget import ThreadBudget
from compiler.repository.reader import cache_holder, composing, linked_copy
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.data import contract_requests, kuairand_lengths

TUNED = (ENSEMBLE, FUSED)  # each keeps its own best budget
PLACED = (ENCODER, SCORER, SPLIT, FUSED)  # the models whose configs tune rewrites, where the repository has them


@dataclass(frozen=True)
class TuneConfig:
    repo: Path = Path("triton_repo")
    history: int | None = None  # the load: L for every request; None: KuaiRand-1K lengths (the benchmark's mixed load)
    candidates: int = 128  # N per request
    requests: int = 16  # distinct requests in the perf_analyzer input file
    concurrency: tuple[int, ...] = (1, 2, 4)
    window_requests: int = 12
    cpu_threads: int = 0  # 0: the budget the build recorded
    protocol: str = "http"


@dataclass(frozen=True)
class TuneResult:
    chosen: dict[str, budget.Placement]  # every placement the repository now holds
    sweep: list[dict]  # per candidate: its placements and each tuned model's best throughput
    thread_budget: ThreadBudget  # what the manifest now records


def tune(cfg: TuneConfig) -> TuneResult:
    repo = Path(cfg.repo)
    record = manifest.read(repo)
    if record.thread_budget is None:
        raise CompilerError(f"tune: {repo} holds no CPU thread budget (built for a GPU target); nothing to tune")
    cpu_threads = cfg.cpu_threads or record.thread_budget.cpu_threads
    tuned = [m for m in TUNED if (repo / m / "config.pbtxt").is_file()]
    served = composing(repo)
    placed = [m for model in tuned for m in served[model]]
    contract = record.contract
    lengths = [cfg.history] * cfg.requests if cfg.history else kuairand_lengths(cfg.requests, max(contract.max_history, 1), seed=11)
    requests = contract_requests(contract, lengths, cfg.candidates, seed=12)
    load = f"L={cfg.history}" if cfg.history else "KuaiRand-1K L"
    sweep = []
    with tempfile.TemporaryDirectory(prefix="stca-tune-") as scratch, stage(f"tune: {cpu_threads} cores, {load}, N={cfg.candidates}") as s:
        inputs = write_input_file(Path(scratch) / "load.json", requests)
        holder = cache_holder(repo)
        candidates = budget.candidates(cpu_threads, holder, placed=tuple(placed))
        progress = Progress("budget", len(candidates), every_s=0)
        for index, placements in enumerate(candidates):
            copy = linked_copy(repo, Path(scratch) / f"candidate-{index}", (ENSEMBLE, VALIDATOR, *PLACED))
            budget.write_placements(copy, placements)
            entry = {"placements": {m: placements[m].to_dict() for m in placed}, "throughput": {}, "at_concurrency": {}}
            with TritonServer(ServerConfig.on_free_ports(copy)) as server:
                url = server.cfg.http_url if cfg.protocol == "http" else server.cfg.grpc_url
                for model in tuned:
                    rows = [perf(model, url, inputs, c, Path(scratch) / "perf.csv", window_requests=cfg.window_requests,
                                 protocol=cfg.protocol) for c in cfg.concurrency]
                    top = max(rows, key=lambda r: r["throughput"])
                    entry["throughput"][model], entry["at_concurrency"][model] = top["throughput"], top["concurrency"]
            sweep.append(entry)
            progress.advance(note=", ".join(f"{m} {'/'.join(placements[p].label() for p in served[m])}: {entry['throughput'][m]:.1f} req/s"
                                            for m in tuned))
        chosen = dict(budget.default_placements(cpu_threads, cache_holder=holder))
        choice = {}
        for model in tuned:
            best = max(range(len(sweep)), key=lambda i: sweep[i]["throughput"][model])
            chosen.update({m: candidates[best][m] for m in served[model]})
            choice[model] = {"candidate": best, "throughput": sweep[best]["throughput"][model]}
        s.summary = "; ".join(f"{m}: {'/'.join(chosen[p].label() for p in served[m])} ({choice[m]['throughput']:.1f} req/s)" for m in tuned)
    budget.write_placements(repo, chosen)  # the configs hold what the manifest records
    tuned_budget = ThreadBudget(cpu_threads, "tune", chosen, tuning={
        "load": load, "candidates_per_request": cfg.candidates, "requests": cfg.requests, "concurrency": list(cfg.concurrency),
        "choice": choice, "sweep": sweep})
    manifest.write(repo, manifest.with_files(replace(record, thread_budget=tuned_budget), repo))
    return TuneResult(chosen, sweep, tuned_budget)
