"""The history row cache on traffic whose item ids never repeat.

    .venv/bin/python benchmarks/row_cache_unique.py --repo "row cache"=REPO --repo "no cache"=REPO [--repo NAME=REPO ...]
        [--history 2000] [--candidates 128] [--requests 48] [--concurrency 1,2,4] [--rounds 2]

The repositories are builds of one model: with the row cache (the default build; or --history-cache-admission all,
plain LRU) and without (--history-cache-bytes 0); each is served as built (its own thread budget). Every request's
history item ids are drawn uniformly from 2^40, so no id is ever sent twice; a row's key is the id's hashed row
(id mod the model's item vocabulary), its action and its age bucket, so rows do repeat once the traffic has covered
those (the counters printed say how often). A server with a row cache is first sent such requests until the cache
holds no more rows (a long-running service's cache is full), then measured.
The servers are measured in turn, round after round, so a drifting machine slows them alike; printed: requests per
second of the `stca` ensemble at each concurrency (best round), each over the first build, each build's placement
of stca_split, and its cache's counters after the run (Triton's /metrics).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from compiler.core.machine import machine, versions
from compiler.core.names import ENSEMBLE, SPLIT
from compiler.measure.bench_repeated import drive
from compiler.repository.reader import read_config
from compiler.serving import server_stats
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.data import sample_requests
from compiler.stca.model import STCAConfig


def unique_requests(config: STCAConfig, history: int, candidates: int, count: int, seed: int) -> list[dict]:
    rng, requests = np.random.default_rng(seed), []
    for request in sample_requests(config, [history] * count, seed=seed, n_candidates=candidates):
        inputs = dict(request.inputs)
        inputs["history_item_ids"] = rng.integers(1, 1 << 40, history).astype(inputs["history_item_ids"].dtype)
        requests.append(inputs)
    return requests


def fill(url: str, metrics_url: str, config: STCAConfig, history: int, candidates: int) -> int:
    """Send never-repeating requests until the row cache holds no more rows; the rows it holds."""
    entries, seed = -1.0, 10_000
    while True:
        seed += 1
        drive(url, ENSEMBLE, unique_requests(config, history, candidates, 16, seed), 4)
        now = server_stats.history_cache_counters(metrics_url, SPLIT).get("entries", 0.0)
        if now == entries:
            return int(now)
        entries = now


def placement(repo: Path) -> str:
    config = read_config(repo / SPLIT / "config.pbtxt")
    return f"{sum(g.count for g in config.instance_group)}x{config.parameters['intra_op_threads'].string_value}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", action="append", required=True, metavar="NAME=REPO", help="a build to measure (twice or more)")
    parser.add_argument("--history", type=int, default=2_000)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--requests", type=int, default=48, help="per concurrency level and round (all distinct)")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    builds = {name: Path(path) for name, _, path in (r.partition("=") for r in args.repo)}
    config = STCAConfig.from_dict(json.loads((next(iter(builds.values())) / "manifest.json").read_text())["model_config"])
    best = {(name, c): 0.0 for name in builds for c in levels}
    counters, filled, seed = {}, {}, 0
    for _ in range(args.rounds):
        for name, repo in builds.items():
            with TritonServer(ServerConfig.on_free_ports(repo)) as server:
                client_url = server.cfg.http_url
                drive(client_url, ENSEMBLE, unique_requests(config, args.history, args.candidates, 2, seed=99), 1)  # warm-up
                if server_stats.history_cache_counters(server.cfg.metrics_url, SPLIT):
                    filled[name] = fill(client_url, server.cfg.metrics_url, config, args.history, args.candidates)
                for c in levels:
                    seed += 1
                    requests = unique_requests(config, args.history, args.candidates, args.requests, seed)
                    seconds = drive(client_url, ENSEMBLE, requests, c).seconds
                    best[name, c] = max(best[name, c], len(requests) / seconds)
                if name in filled:
                    counters[name] = server_stats.history_cache_counters(server.cfg.metrics_url, SPLIT)
    m, v = machine(), versions()
    print(f"{m.describe()}; onnxruntime {v['onnxruntime']}; tritonserver {v.get('tritonserver', '?')}")
    print(f"never-repeating item ids, L={args.history}, N={args.candidates}, {args.requests} requests per level, best of {args.rounds} rounds")
    print("| build | stca_split placement | " + " | ".join(f"req/s conc {c}" for c in levels) + " | best |")
    print("|---|---|" + "---:|" * (len(levels) + 1))
    for name, repo in builds.items():
        rates = [best[name, c] for c in levels]
        print(f"| {name} | {placement(repo)} | " + " | ".join(f"{r:.1f}" for r in rates) + f" | {max(rates):.1f} |")
    first = max(best[next(iter(builds)), c] for c in levels)
    for name in builds:
        print(f"{name}: best {max(best[name, c] for c in levels) / first:.2f}x the first build's"
              + (f"; cache filled to {filled[name]} rows first, counters after the run "
                 f"{ {k: int(v) for k, v in counters[name].items()} }" if name in filled else ""))


if __name__ == "__main__":
    main()
