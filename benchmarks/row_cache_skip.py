"""What a request that skips the row cache costs, in process: the whole encoder against each distinct row once.

    .venv/bin/python benchmarks/row_cache_skip.py --repo REPO [--threads 1] [--users 8] [--candidates 128]

REPO is a build with its halves in two processes (`build --split-processes 2`), whose history cache sends each
distinct row once (report.md, "Repeated rows"). A request skips a full cache that does not pay (compiler.runtime.
row_cache.CacheWorth); with a multiplicity it runs the row graph on its distinct keys and the scorer on those rows,
else the whole encoder and the scorer on every row. Both ways, interleaved request by request, on the first visits
of repeated users (compiler.stca.data.RepeatedUsers: items that recur in a history) and on the same requests with
never-repeating item ids; printed: the mean ms per request of each, and the largest difference of their scores.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from compiler.core.machine import machine, versions
from compiler.core.names import ENCODER, SCORER
from compiler.repository.reader import read_config
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import CachedEncoder, RowKey
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=128)
    args = parser.parse_args()

    config = STCAConfig.from_dict(json.loads((args.repo / "manifest.json").read_text())["model_config"])
    graph = lambda file: OrtGraph(args.repo / ENCODER / "1" / file, threads=args.threads)  # noqa: E731
    encoder, key_graph, row_graph = graph("model.onnx"), graph("key_graph.onnx"), graph("row_graph.onnx")
    scorer = OrtGraph(args.repo / SCORER / "1" / "model.onnx", threads=args.threads)
    spec = json.loads(read_config(args.repo / ENCODER / "config.pbtxt").parameters["history_cache"].string_value)
    if not spec.get("multiplicity"):
        raise SystemExit(f"{args.repo}: its history cache sends every row (report.md, 'Repeated rows'): nothing to compare")
    once = CachedEncoder(key_graph.run, row_graph.run, [RowKey(n, d) for n, d in spec["keys"]], None, multiplicity=spec["multiplicity"])
    multiset_rows = next(iter(spec["rows"]))  # a cached output: one row per row sent

    first_visits = repeated_user_requests(config, RepeatedUsers(users=args.users, visits=1), seed=7, n_candidates=args.candidates)
    rng = np.random.default_rng(0)
    fresh = [{**r, "history_item_ids": 1 + rng.choice(1 << 40, len(r["history_item_ids"]), replace=False)} for r in first_visits]
    v = versions()
    print(f"{machine().describe()}; onnxruntime {v['onnxruntime']}; {args.threads} threads, N {args.candidates}")
    for label, requests in (("items that recur", first_visits), ("never-repeating ids", fresh)):
        scorer.run({**requests[0], **encoder.run(requests[0])}), scorer.run({**requests[0], **once(requests[0])})  # warm-up
        whole_ms, once_ms, share, largest = [], [], [], 0.0
        for r in requests:
            start = time.perf_counter()
            every_row = scorer.run({**r, **encoder.run(r)})["scores"]
            middle = time.perf_counter()
            cut = once(r)
            distinct_rows = scorer.run({**r, **cut})["scores"]
            whole_ms.append(1e3 * (middle - start))
            once_ms.append(1e3 * (time.perf_counter() - middle))
            share.append(len(cut[multiset_rows]) / len(r["history_item_ids"]))
            largest = max(largest, float(np.abs(every_row - distinct_rows).max()))
        whole, each_once = statistics.mean(whole_ms), statistics.mean(once_ms)
        print(f"  {label}: {len(requests)} requests, mean L {statistics.mean(len(r['history_item_ids']) for r in requests):.0f}, "
              f"distinct rows per history row {statistics.mean(share):.2f}: whole encoder + scorer {whole:.1f} ms, "
              f"each distinct row once {each_once:.1f} ms ({whole / each_once:.2f}x); largest score difference {largest:.1e}")


if __name__ == "__main__":
    main()
