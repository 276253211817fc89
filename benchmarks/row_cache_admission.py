"""The row cache's hit rate on repeated-user traffic against its budget, with and without admission.

    .venv/bin/python benchmarks/row_cache_admission.py --repo REPO [--users 64] [--visits 12] [--fractions 0.1,0.25,0.5,1]

REPO is a build with the row cache (python target). The traffic (compiler.stca.data.RepeatedUsers: users whose
histories grow and age between visits, items drawn from a Zipf law) is turned into row keys by the repository's own
key graph and replayed, in order, through compiler/runtime/row_cache.py (the module the server runs) at budgets that
hold a fraction of the traffic's distinct rows, once with frequency admission (the default) and once admitting every
row (plain LRU). The row graph is not run: a hit rate depends only on the keys. Prints the hit rate (distinct keys
found over distinct keys looked up, per request, as Triton's counters count them) and the rows each policy copied in.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from compiler.core.machine import machine
from compiler.core.names import SPLIT
from compiler.repository.reader import cache_holder, read_config
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import ADMISSIONS, ENTRY_OVERHEAD_BYTES, RowCache, RowSpec, distinct, key_codes
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--visits", type=int, default=12)
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1", help="budgets, as fractions of the traffic's distinct rows")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    holder = cache_holder(args.repo) or SPLIT
    spec = json.loads(read_config(args.repo / holder / "config.pbtxt").parameters["history_cache"].string_value)
    rows = {name: RowSpec(dtype, tuple(shape)) for name, (dtype, shape) in spec["rows"].items()}
    key_names = [name for name, _ in spec["keys"]]
    key_graph = OrtGraph(args.repo / holder / "1" / "key_graph.onnx")
    config = STCAConfig.from_dict(json.loads((args.repo / "manifest.json").read_text())["model_config"])
    traffic = repeated_user_requests(config, RepeatedUsers(users=args.users, visits=args.visits), seed=args.seed, n_candidates=1)
    requests = []
    for request in traffic:
        keyed = key_graph.run(request)
        requests.append(key_codes([keyed[name] for name in key_names]))
    working_set = len(distinct(np.concatenate(requests))[0])
    entry = sum(s.nbytes for s in rows.values()) + 8 * len(key_names) + ENTRY_OVERHEAD_BYTES
    zeros = {name: np.zeros((0, *s.row_shape), s.dtype) for name, s in rows.items()}
    print(f"{machine().describe()}; {len(requests)} requests ({args.users} users x {args.visits} visits), "
          f"{sum(len(r) for r in requests):,} history rows, {working_set:,} distinct row keys")
    print("| budget (rows) | share of the distinct keys | " + " | ".join(f"hit rate, {a}" for a in ADMISSIONS)
          + " | " + " | ".join(f"rows copied in, {a}" for a in ADMISSIONS) + " |")
    print("|---:|---:|" + "---:|" * (2 * len(ADMISSIONS)))
    for fraction in (float(f) for f in args.fractions.split(",")):
        capacity = max(1, int(fraction * working_set))
        hit, copied = {}, {}
        for admission in ADMISSIONS:
            cache = RowCache(capacity * entry, rows, len(key_names), admission)
            for codes in requests:
                cache.lookup(codes, lambda missing: {n: np.zeros((len(missing), *z.shape[1:]), z.dtype) for n, z in zeros.items()})
            hit[admission] = cache.hits / max(1, cache.hits + cache.misses)
            copied[admission] = cache.admitted
        print(f"| {capacity:,} | {fraction:.0%} | " + " | ".join(f"{hit[a]:.3f}" for a in ADMISSIONS) + " | "
              + " | ".join(f"{copied[a]:,}" for a in ADMISSIONS) + " |")


if __name__ == "__main__":
    main()
