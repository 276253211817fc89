"""Serve one built repository under several thread placements on the repeated-users suite's traffic.

    .venv/bin/python benchmarks/row_cache_placements.py --repo REPO 1x2,1x2 1x2,1x2spin 1x1,2x1
    .venv/bin/python benchmarks/row_cache_placements.py --repo REPO 1x2 2x1      # the halves in one process (stca_split)

REPO is a python-target build with the row cache (in stca_split, or with `--history-cache-at` in either half). Each
PLACEMENT is ENCODER,SCORER as INSTANCESxTHREADS[spin] (stca_split's alone where it holds the cache); for each, the repository's configs are rewritten (compiler.repository.budget), a
fresh server is started (an empty cache), the suite's warm-up users are sent, then each concurrency level's users
(the same seeds as compiler/measure/bench_repeated.py), and req/s and the row-key hit rate per level are printed. The
recorded suite (`python -m compiler bench --suites repeated_users`) measures one placement per variant, the one
tune chose; this measures the others on the traffic the cache is for.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from compiler.core.artifacts import MANIFEST
from compiler.core.names import ENCODER, ENSEMBLE, SCORER, SPLIT
from compiler.measure.bench_repeated import RepeatedConfig, drive, hit_rate
from compiler.repository import budget
from compiler.repository.reader import cache_holder, read_config, write_config
from compiler.serving import server_stats
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig


def placement(text: str) -> budget.Placement:
    spinning = text.endswith("spin")
    instances, threads = text.removesuffix("spin").split("x")
    return budget.Placement(int(instances), int(threads), spinning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("placements", nargs="+", metavar="ENCODER,SCORER")
    args = parser.parse_args()
    config = STCAConfig.from_dict(json.loads((args.repo / MANIFEST).read_text())["model_config"])
    cfg = RepeatedConfig()
    levels = {c: repeated_user_requests(config, cfg.traffic, seed=1_000 + c, n_candidates=cfg.candidates) for c in cfg.concurrency}
    warmup = repeated_user_requests(config, RepeatedUsers(**{**asdict(cfg.traffic), "users": cfg.warmup_users, "visits": 2}),
                                    seed=999, n_candidates=cfg.candidates)
    holder = cache_holder(args.repo)
    for label in args.placements:
        for model, text in zip((SPLIT,) if holder == SPLIT else (ENCODER, SCORER), label.split(",")):
            path = args.repo / model / "config.pbtxt"
            model_config = read_config(path)
            budget.configure(model_config, placement(text), "python")
            path.unlink()  # a build's files may be hard links (compiler.measure.tune); write a fresh one
            write_config(args.repo, model_config)
        with TritonServer(ServerConfig.on_free_ports(args.repo)) as triton:
            url, metrics = triton.cfg.http_url, triton.cfg.metrics_url
            drive(url, ENSEMBLE, warmup, 1)
            cells = []
            for concurrency, requests in levels.items():
                before = server_stats.history_cache_counters(metrics, holder)
                seconds = drive(url, ENSEMBLE, requests, concurrency).seconds
                after = server_stats.history_cache_counters(metrics, holder)
                rate = hit_rate({k: after[k] - before.get(k, 0.0) for k in ("hits", "misses")})
                cells.append(f"concurrency {concurrency}: {len(requests) / seconds:.1f} req/s, hit rate {rate:.2f}")
        print(f"{label} (cache in {holder}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
