"""The history row cache without Triton: what one request costs in one process, on repeated-user traffic.

    .venv/bin/python benchmarks/row_cache_in_process.py --repo REPO [--threads 1] [--users 8 --visits 12] [--seed 1004]

REPO is a build with --baselines (python target, row cache on). Every graph runs in ONNX Runtime in this
process with the same threads; the traffic (compiler.stca.data.RepeatedUsers) is sent once, in order, to each of:
  fused        stca_fused/1/model.onnx, the unsplit graph
  split        the encoder (model.onnx) then the scorer, the cut passed in memory
  row cache    key graph + row cache (compiler/runtime/row_cache.py, the served module) + row graph, then the scorer
               (on each distinct row once, where the build's history_multiset check allowed it)
and the mean ms per request is printed per stage. Set against the served numbers (benchmarks/results/
repeated-users-*), the difference is what serving adds: the cut copied out of one Python-backend process and
into another, and Triton's scheduling.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from compiler.core.names import ENCODER, FUSED, SCORER
from compiler.measure.bench_repeated import warmup_requests
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import CachedEncoder, RowCache, RowKey, RowSpec
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (1: a request's core time)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--visits", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1_004, help="the traffic's seed (the bench's level at concurrency c uses 1000 + c)")
    args = parser.parse_args()

    manifest = json.loads((args.repo / "manifest.json").read_text())
    config = STCAConfig.from_dict(manifest["model_config"])
    traffic = repeated_user_requests(config, RepeatedUsers(users=args.users, visits=args.visits), seed=args.seed, n_candidates=args.candidates)
    warmup = warmup_requests(config, RepeatedUsers(users=args.users, visits=args.visits), 4, args.candidates)
    graph = lambda model, file="model.onnx": OrtGraph(args.repo / model / "1" / file, threads=args.threads)  # noqa: E731
    fused, encoder, scorer = graph(FUSED), graph(ENCODER), graph(SCORER)
    keys, rows = graph(ENCODER, "key_graph.onnx"), graph(ENCODER, "row_graph.onnx")
    spec = json.loads(_parameter(args.repo / ENCODER / "config.pbtxt", "history_cache"))
    row_specs = {name: RowSpec(dtype, tuple(shape)) for name, (dtype, shape) in spec["rows"].items()}
    row_keys = [RowKey(name, dtype) for name, dtype in spec["keys"]]
    budget = int(_parameter(args.repo / ENCODER / "config.pbtxt", "history_cache_bytes"))
    cached = CachedEncoder(keys.run, rows.run, row_keys, RowCache(budget, row_specs, len(row_keys)), multiplicity=spec.get("multiplicity"))

    def timed(stages: dict, name: str, run, *a):
        start = time.perf_counter()
        out = run(*a)
        stages.setdefault(name, []).append(1e3 * (time.perf_counter() - start))
        return out

    def fused_request(r, stages):
        timed(stages, "whole graph", fused.run, r)

    def split_request(r, stages):
        cut = timed(stages, "encoder", encoder.run, r)
        timed(stages, "scorer", scorer.run, {**r, **cut})

    def cached_request(r, stages):
        cut = timed(stages, "encoder (row cache)", cached, r)
        timed(stages, "scorer", scorer.run, {**r, **cut})

    print(f"{len(traffic)} requests, mean L {statistics.mean(len(r['history_item_ids']) for r in traffic):.0f}, "
          f"N {args.candidates}, {args.threads} threads; mean ms per request:")
    for label, request in (("fused", fused_request), ("split", split_request), ("row cache", cached_request)):
        for r in warmup:
            request(r, {})
        stages = {}
        for r in traffic:
            request(r, stages)
        total = sum(statistics.mean(v) for v in stages.values())
        print(f"  {label:10s} {total:7.1f}  (" + ", ".join(f"{k} {statistics.mean(v):.1f}" for k, v in stages.items()) + ")")
    c = cached.cache.counters()
    history_rows = sum(len(r["history_item_ids"]) for r in warmup + traffic)
    print(f"  row cache: {c['hits']} keys found, {c['misses']} computed, {c['entries']} held; distinct keys per history row "
          f"{(c['hits'] + c['misses']) / history_rows:.2f}, " + ("each sent to the scorer once" if cached.multiplicity else "every row sent"))


def _parameter(config_path: Path, name: str) -> str:
    from compiler.repository.reader import read_config

    return read_config(config_path).parameters[name].string_value


if __name__ == "__main__":
    main()
