"""Bench: repeated-user traffic, the load the history row cache is for.

    repeated_users(served_repositories(...), config, RepeatedConfig(...)) -> results.json's "repeated_users"

Six ways to serve the same traffic (compiler.stca.data.RepeatedUsers), each on a server of its own, so each starts empty:
  row cache, one process    `stca` as built by default: both halves in one process (stca_split), which holds the
                  row cache (compiler/runtime/row_cache.py)
  row cache       the halves in two processes (--split-processes 2): the history encoder serves rows from its row cache
  row cache in the scorer   two processes with --history-cache-at scorer: the encoder step runs the key graph and the
                  scorer holds the cache, so row keys cross between the steps instead of the cut
  no cache        two processes, the encoder's history_cache_bytes set to 0: every request encodes its whole history
  response cache  two processes without the row cache, with Triton's response cache on the encoder
  fused           `stca_fused`, the unsplit graph
Every request is sent once, in order, by `concurrency` client threads: perf_analyzer cycles through a fixed set
of requests, which a response cache would answer from memory after one pass, and real traffic never repeats
a request byte for byte (ages move, histories grow). The six servers run side by side; each gets a warm-up pass of
other users (a cache in service has seen other users), then at each concurrency level a fresh set of users, the
variants in turn level by level, so that a host whose speed drifts (a shared VM: 7-15% between passes minutes
apart) moves them alike and their ratios hold; throughput is requests over wall time. Each level records Triton's
per-model stage times and the cache's counters. Then, at concurrency 1, each request's encoder time against the
rows it had to compute (the row cache's misses) and its length; and the memory of the processes holding the cache
(the encoder's without one) before and after: each one's own, and the shared memory they map (a cache its instances
share, resident in full from load) counted once.
"""

import contextlib
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compiler.core.log import stage
from compiler.core.names import ENCODER, ENSEMBLE, FUSED, SCORER, SPLIT
from compiler.repository.reader import cache_holder, cache_multiplicity, composing, linked_copy, update_config
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, StubProcess, TritonServer, shared_once, stub_processes
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig

VARIANTS = ("row cache, one process", "row cache", "row cache in the scorer", "no cache", "response cache", "fused")


@dataclass(frozen=True)
class RepeatedConfig:
    traffic: RepeatedUsers = field(default_factory=RepeatedUsers)  # per concurrency level
    warmup_users: int = 4
    candidates: int = 128
    concurrency: tuple[int, ...] = (1, 2, 4)
    profile_users: int = 4  # users of the per-request pass at concurrency 1


def served_repositories(one_process: Path, encoder_cached: Path, scorer_cached: Path, uncached: Path, work: Path) -> dict[str, tuple[Path, str]]:
    """variant -> (repository, the model to call). `encoder_cached` (two processes, the cache in the encoder) also serves
    the fused baseline; `uncached` (a copy of it whose encoder has history_cache_bytes 0, with its own thread budget
    where it was tuned) also gets the response cache."""
    return {"row cache, one process": (one_process, ENSEMBLE), "row cache": (encoder_cached, ENSEMBLE),
            "row cache in the scorer": (scorer_cached, ENSEMBLE), "no cache": (uncached, ENSEMBLE),
            "response cache": (_with_response_cache(uncached, work / "repo-response-cache"), ENSEMBLE), "fused": (encoder_cached, FUSED)}


def level_requests(config: STCAConfig, traffic: RepeatedUsers, concurrency: int, candidates: int) -> list[dict]:
    """The suite's fresh users for one concurrency level (a seed of its own per level)."""
    return repeated_user_requests(config, traffic, seed=1_000 + concurrency, n_candidates=candidates)


def warmup_requests(config: STCAConfig, traffic: RepeatedUsers, users: int, candidates: int) -> list[dict]:
    """The suite's warm-up pass: `users` other users, two visits each (a cache in service has seen other users)."""
    return repeated_user_requests(config, RepeatedUsers(**{**asdict(traffic), "users": users, "visits": 2}), seed=999,
                                  n_candidates=candidates)


def repeated_users(served: dict[str, tuple[Path, str]], config: STCAConfig, cfg: RepeatedConfig) -> dict:
    """Measure the variants (module docstring) in `served` (served_repositories)."""

    levels = {c: level_requests(config, cfg.traffic, c, cfg.candidates) for c in cfg.concurrency}
    warmup = warmup_requests(config, cfg.traffic, cfg.warmup_users, cfg.candidates)
    profile = repeated_user_requests(config, RepeatedUsers(**{**asdict(cfg.traffic), "users": cfg.profile_users, "visits": 3}),
                                     seed=2_000, n_candidates=cfg.candidates)
    results = {"traffic": asdict(cfg.traffic), "warmup_users": cfg.warmup_users, "candidates": cfg.candidates,
               "mean_history": statistics.mean(len(r["history_item_ids"]) for rs in levels.values() for r in rs), "variants": {}}
    with contextlib.ExitStack() as servers:
        up = {variant: _Served(*served[variant], servers) for variant in VARIANTS}
        with stage(f"bench: repeated users, {len(up)} servers warmed") as s:
            for one in up.values():  # a cache in service has seen other users
                drive(one.url, one.model, warmup, concurrency=1)
            s.summary = ", ".join(VARIANTS)
        rows = {variant: [] for variant in VARIANTS}
        for concurrency, requests in levels.items():  # level by level, the variants in turn: a drifting host slows all alike
            with stage(f"bench: repeated users, concurrency {concurrency}") as s:
                for variant, one in up.items():
                    rows[variant].append(one.level(requests, concurrency))
                s.summary = "; ".join(f"{v} {rows[v][-1]['throughput']:.1f} req/s" for v in VARIANTS)
        for variant, one in up.items():
            # multiplicity: the repository's row cache's, the way stca (not stca_fused) goes through it
            results["variants"][variant] = {
                "model": one.model, "cache_holder": one.holder, "multiplicity": cache_multiplicity(one.path),
                "rows": rows[variant], "per_request": one.profile(profile),
                "cache": server_stats.history_cache_counters(one.metrics, one.holder),
                **memory_fields("before", one.memory_before), **memory_fields("after", holder_memory(one.pid, one.holder))}
    return results


class _Served:
    """One variant's server, started on `stack` (stopped with it), and what the suite measures through it."""

    def __init__(self, path: Path, model: str, stack: contextlib.ExitStack):
        self.path, self.model = path, model
        self.holder = cache_holder(path) or ENCODER  # whose counters and memory to read
        self.parts = composing(path)[model]
        triton = stack.enter_context(TritonServer(ServerConfig.on_free_ports(path)))
        self.url, self.metrics, self.pid = triton.cfg.http_url, triton.cfg.metrics_url, triton.process.pid
        self.memory_before = holder_memory(self.pid, self.holder)

    def level(self, requests: list[dict], concurrency: int) -> dict:
        """One concurrency level's row of results.json: throughput, latency, Triton's stage times, the cache's counters."""
        url, metrics = self.url, self.metrics
        before, counters = server_stats.snapshot(url), server_stats.history_cache_counters(metrics, self.holder)
        halves = server_stats.split_half_ms(metrics) if self.parts == (SPLIT,) else None
        started = time.time()
        driven = drive(url, self.model, requests, concurrency)
        after = server_stats.history_cache_counters(metrics, self.holder)
        stages = server_stats.since(url, before, self.parts)
        row = {"concurrency": concurrency, "started_s": started, "requests": len(requests), "throughput": len(requests) / driven.seconds,
               "p50_ms": _percentile(driven.latencies_ms, 50), "p99_ms": _percentile(driven.latencies_ms, 99),
               "stages": [asdict(t) for t in stages], "history_rows": sum(len(r["history_item_ids"]) for r in requests),
               "cache": {k: after[k] - counters.get(k, 0.0) for k in ("hits", "misses", "evictions") if k in after}}
        if halves is not None and stages:
            row["split_halves_ms"] = server_stats.halves_since(metrics, halves, stages[0].requests)
        return row

    def profile(self, requests: list[dict]) -> list[dict]:
        """encoder_profile's records where the halves are two models and the encoder holds the cache, else none."""
        if self.parts == (ENCODER, SCORER) and self.holder == ENCODER:
            return encoder_profile(self.url, self.metrics, self.parts, requests)
        return []


def hit_rate(cache: dict) -> float:
    """Distinct keys found over distinct keys looked up."""
    looked_up = cache.get("hits", 0.0) + cache.get("misses", 0.0)
    return cache.get("hits", 0.0) / looked_up if looked_up else 0.0


def distinct_share(rows: list[dict]) -> float:
    """Distinct keys looked up over the history rows sent, over these levels (rows of repeated_users, each with its
    cache counters and history_rows)."""
    return sum(row["cache"]["hits"] + row["cache"]["misses"] for row in rows) / sum(row["history_rows"] for row in rows)


MIDWAY_AFTER_S = 0.01  # the middle request's bytes are on their way, well before any answer (tens of ms at least)


@dataclass(frozen=True)
class Driven:
    """What drive saw: the wall seconds, and per request (in the order given) when it was sent and how long its
    answer took; when `midway` ran, if it did. Times in seconds from the first send."""
    seconds: float
    sent_s: list[float]
    latencies_ms: list[float]
    midway_s: float | None


def drive(url: str, model: str, requests: list[dict], concurrency: int, retries: int = 5,
          midway: Callable[[], None] | None = None) -> Driven:
    """Send every request once, in order, from `concurrency` threads, each with its user's routing key. A request
    that fails after the client's `retries` raises. `midway` is called once, on a thread of its own, MIDWAY_AFTER_S
    after the middle request is sent, so that it runs with requests in flight."""
    position, lock, errors = iter(range(len(requests))), threading.Lock(), []
    sent, latencies, midway_at = [0.0] * len(requests), [0.0] * len(requests), []

    def run_midway():
        midway_at.append(time.perf_counter() - start)
        try:
            midway()
        except Exception as e:  # noqa: BLE001  (re-raised in the caller's thread)
            errors.append(e)

    timer = threading.Timer(MIDWAY_AFTER_S, run_midway) if midway is not None else None

    def client_loop():
        client = ScoringClient(url, "http", model=model, timeout_s=600.0, retries=retries)
        try:
            while True:
                with lock:
                    k = next(position, None)
                if k is None:
                    return
                sent[k] = time.perf_counter() - start
                if timer is not None and k == len(requests) // 2:
                    timer.start()
                client.score(requests[k])
                latencies[k] = 1e3 * (time.perf_counter() - start - sent[k])
        except Exception as e:  # noqa: BLE001  (re-raised in the caller's thread)
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if timer is not None and timer.ident is not None:  # started
        timer.join()
    if errors:
        raise errors[0]
    return Driven(time.perf_counter() - start, sent, latencies, midway_at[0] if midway_at else None)


def encoder_profile(url: str, metrics: str, parts: tuple[str, ...], requests: list[dict]) -> list[dict]:
    """One request at a time through the ensemble's two halves (`parts`): its history length, the rows the encoder
    computed for it (the row cache's misses; all of them without a cache) and the encoder's compute time, from
    Triton's statistics around it."""
    out = []
    for request in requests:
        before, counters = server_stats.snapshot(url), server_stats.history_cache_counters(metrics, ENCODER)
        drive(url, ENSEMBLE, [request], 1)
        times = {t.model: t for t in server_stats.since(url, before, parts)}
        after = server_stats.history_cache_counters(metrics, ENCODER)
        length = len(request["history_item_ids"])
        out.append({"history": length, "computed_rows": after["misses"] - counters["misses"] if after else length,
                    "encoder_ms": times[ENCODER].compute_infer_ms, "scorer_ms": times[SCORER].compute_infer_ms})
    return out


def holder_memory(server_pid: int, model: str = ENCODER) -> list[StubProcess]:
    """A model's Python-backend processes (in the server's process group), with what each holds resident."""
    return [stub for stub in stub_processes(server_pid) if stub.model == model]


def memory_fields(when: str, stubs: list[StubProcess]) -> dict:
    """results.json's memory_<when> (each process's own bytes) and shared_<when> (the shared memory they map, once)."""
    return {f"memory_{when}": sorted(s.own_bytes for s in stubs), f"shared_{when}": shared_once(stubs)}


def uncached_copy(repo: Path, copy: Path) -> Path:
    """The repository with the encoder's row cache off."""
    return _copy_with_encoder(repo, copy, _row_cache_off)


def _with_response_cache(repo: Path, copy: Path) -> Path:
    return _copy_with_encoder(repo, copy, _response_cache_on)


def _row_cache_off(config) -> None:
    config.parameters["history_cache_bytes"].string_value = "0"


def _response_cache_on(config) -> None:
    config.response_cache.enable = True


def _copy_with_encoder(repo: Path, copy: Path, change) -> Path:
    """A copy of `repo` (compiler.repository.reader.linked_copy, with its build record: tune rewrites that) with
    `change` applied to the encoder's config."""
    shutil.rmtree(copy, ignore_errors=True)
    linked_copy(repo, copy, with_manifest=True)
    update_config(copy, ENCODER, change)
    return copy


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
