"""History-row-cache hit rate across R server replicas, each with its own row cache, for two routings: affinity (a
consistent-hash ring of the user key onto the replicas, as nginx's `hash $key consistent`) and random (each request to
a uniformly random replica; round-robin spreads a user's visits the same way). A simulation: no server runs.

    .venv/bin/python benchmarks/cache_sim.py [--repo REPO] [--users 300] [--visits 12] [--seed 0]
        [--replicas 1,2,4,8,16,32,64] [--out benchmarks/results/cache-sim]

Traffic is the project's repeated-users model (compiler.stca.data.RepeatedUsers, its defaults but --users and
--visits): users come back with a few new interactions each visit while their older items age, visits interleaved
over users. Each request's row keys are the served cache's own: the key graph (key_graph.onnx of the model that holds
the cache in REPO, a built repository; without --repo the demo model is built into a temporary folder first) runs on
the request's history inputs and its key columns become int64 codes as CachedEncoder makes them. Each replica's cache
is the served RowCache (TinyLFU admission; plain LRU, admission "all", as one more series) sized in rows: its rows are
one byte, so no row memory is held. A request is routed by its user's id; the affinity ring is ketama's (160 points a
replica). Budgets are fractions of the working set (the distinct row keys of the whole traffic): a fixed total split
evenly over the R replicas, and a fixed budget per replica.

Hit rate: distinct keys found over distinct keys looked up, summed over the replicas (the served counters count
the same), over the visits after each user's first (the warm-up) and over all visits. Written to --out: results.json
(every cell, with its hits and misses per visit), results.md (the tables) and hit_rate.png.
"""

import argparse
import bisect
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compiler.core.machine import machine, versions
from compiler.repository.reader import cache_holder, read_config
from compiler.runtime.row_cache import RowCache, RowSpec, distinct, key_codes
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig

ROUTINGS = ("affinity", "random")
TOTAL_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)  # total budget over all replicas, of the working set
PER_REPLICA_FRACTIONS = (1 / 32, 1 / 8)  # each replica's budget, of the working set
LRU_TOTAL_FRACTIONS = (1 / 4,)  # plain LRU (admission "all") for these total budgets only: each series costs a minute or two
TINY_ROW = {"row": RowSpec("uint8", (1,))}  # a row of one byte: the cache's capacity in rows without the rows' memory


class Ring:
    """A ketama consistent-hash ring (libketama): POINTS points a server on a 32-bit circle, four from each md5 of
    "server-i"; a key goes to the server of the first point at or after its hash (md5's first four bytes), wrapping
    around. nginx's `hash $key consistent` has the same 160 points a server but places them, and hashes keys, with
    crc32: which user lands where differs, the balance and the moves when a server goes do not."""

    POINTS = 160

    def __init__(self, servers: list[str]):
        points = sorted((point, server) for server in servers for point in self._points(server))
        self.points = [point for point, _ in points]
        self.servers = [server for _, server in points]

    @classmethod
    def _points(cls, server: str) -> list[int]:
        digests = [hashlib.md5(f"{server}-{i}".encode()).digest() for i in range(cls.POINTS // 4)]
        return [int.from_bytes(d[4 * j: 4 * j + 4], "little") for d in digests for j in range(4)]

    def server(self, key: str) -> str:
        point = int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little")
        return self.servers[bisect.bisect_left(self.points, point) % len(self.points)]


def replica_names(replicas: int) -> list[str]:
    return [f"replica-{r}" for r in range(replicas)]


def routes(users: list[str], replicas: int, routing: str, seed: int) -> np.ndarray:
    """The replica (0..replicas-1) each request goes to, given each request's user key."""
    if routing == "random":
        return np.random.default_rng(seed).integers(0, replicas, len(users))
    names = replica_names(replicas)
    ring, index = Ring(names), {name: r for r, name in enumerate(names)}
    home = {user: index[ring.server(user)] for user in set(users)}
    return np.array([home[user] for user in users], np.int64)


def no_rows(codes: np.ndarray) -> dict:
    """The row graph's stand-in: a row of TINY_ROW for each missing key."""
    return {"row": np.zeros((len(codes), 1), np.uint8)}


def simulate(users: list[str], codes: list[np.ndarray], replicas: int, routing: str, capacity: int,
             admission: str = "frequency", seed: int = 0, placed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each request's (distinct keys found, distinct keys computed) in the cache of the replica it is routed to; one
    RowCache of `capacity` rows a replica. users[i] and codes[i] ([M, k] int64) are request i's user key and row keys.
    `placed`: each request's replica as a real router placed it, instead of `routing`'s."""
    key_width = codes[0].shape[1]
    budget = capacity * RowCache(0, TINY_ROW, key_width).entry_bytes  # the bytes that hold exactly `capacity` rows
    caches = [RowCache(budget, TINY_ROW, key_width, admission) for _ in range(replicas)]
    hits, misses = np.zeros(len(codes), np.int64), np.zeros(len(codes), np.int64)
    placed = routes(users, replicas, routing, seed) if placed is None else placed
    for i, (replica, request) in enumerate(zip(placed, codes)):
        cache = caches[replica]
        found, computed = cache.hits, cache.misses
        cache.lookup(request, no_rows)
        hits[i], misses[i] = cache.hits - found, cache.misses - computed
    return hits, misses


def build_demo(out: Path) -> Path:
    """The demo model built as `compiler build` builds it by default (fp32, python target, the row cache)."""
    subprocess.run([sys.executable, "-m", "compiler", "build", "--out", str(out)], check=True)
    return out


def key_graph(repo: Path) -> tuple[ort.InferenceSession, list[str], str]:
    """The key graph of the model holding the row cache, its key outputs in the order the cache takes them, and its
    file in the repository."""
    holder = cache_holder(repo)
    path = repo / str(holder) / "1" / "key_graph.onnx"
    if holder is None or not path.is_file():
        raise SystemExit(f"{repo}: no model runs a key graph beside its row cache (build with the default cache)")
    spec = json.loads(read_config(repo / holder / "config.pbtxt").parameters["history_cache"].string_value)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one core: the other stays free
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, [name for name, _ in spec["keys"]], str(path.relative_to(repo))


def request_keys(session: ort.InferenceSession, keys: list[str], requests: list[dict]) -> list[np.ndarray]:
    """Each request's distinct row keys, [M, k] int64 codes, as CachedEncoder hands them to the cache (the cache
    counts, and keeps, each distinct key of a request once, so the distinct keys alone give it the same lookups)."""
    inputs = [i.name for i in session.get_inputs()]
    codes = []
    for request in requests:
        keyed = dict(zip(keys, session.run(keys, {name: request[name] for name in inputs})))
        codes.append(distinct(key_codes([keyed[name] for name in keys]))[0])
    return codes


def working_set(codes: list[np.ndarray], chunk: int = 256) -> int:
    """Distinct row keys over all requests (merged a chunk of requests at a time, to hold one copy of them at most)."""
    seen = codes[0][:0]
    for start in range(0, len(codes), chunk):
        seen = distinct(np.concatenate([seen, *codes[start: start + chunk]]))[0]
    return len(seen)


def keys_per_request(codes: list[np.ndarray]) -> dict:
    sizes = np.array([len(c) for c in codes])
    return {"mean": float(sizes.mean()), "median": float(np.median(sizes)), "max": int(sizes.max())}


def plan(replicas: list[int], ws: int) -> list[dict]:
    """Every cell: budget kind and fraction, replicas, routing, admission, and the rows each replica's cache holds."""
    series = [("total", f, "frequency") for f in TOTAL_FRACTIONS] + [("total", f, "all") for f in LRU_TOTAL_FRACTIONS]
    series += [("per_replica", f, "frequency") for f in PER_REPLICA_FRACTIONS]
    cells = []
    for budget, fraction, admission in series:
        for routing in ROUTINGS:
            for r in replicas:
                rows = fraction * ws / (r if budget == "total" else 1)
                cells.append({"budget": budget, "fraction": fraction, "admission": admission, "routing": routing,
                              "replicas": r, "capacity_rows": max(1, round(rows))})
    return cells


def run(cells: list[dict], users: list[str], codes: list[np.ndarray], visits: int, seed: int) -> None:
    """Fill in each cell's hits and misses per visit and its hit rates. Cells that are the same simulation (one
    replica routes alike either way; a budget per replica is a total one at R=1) are simulated once."""
    done, sizes = {}, np.array([len(c) for c in codes])
    for cell in cells:
        same = (cell["replicas"], cell["routing"] if cell["replicas"] > 1 else "", cell["capacity_rows"], cell["admission"])
        start = time.perf_counter()
        if same not in done:
            hits, misses = simulate(users, codes, cell["replicas"], cell["routing"], cell["capacity_rows"], cell["admission"], seed)
            done[same] = hits.reshape(visits, -1).sum(axis=1), misses.reshape(visits, -1).sum(axis=1)  # visit-major
        hits, misses = done[same]
        cell.update(hits_by_visit=hits.tolist(), misses_by_visit=misses.tolist(), hit_rate=rate(hits, misses),
                    hit_rate_warm=rate(hits[1:], misses[1:]), seconds=round(time.perf_counter() - start, 1),
                    # a request with more distinct keys than the cache holds keeps none of its rows (RowCache.lookup)
                    requests_larger_than_cache=float((sizes > cell["capacity_rows"]).mean()))
        print(f"{label(cell)} R={cell['replicas']} {cell['routing']}: {cell['capacity_rows']} rows a replica, "
              f"hit rate {cell['hit_rate_warm']:.3f} after warm-up ({cell['seconds']} s)", flush=True)


def rate(hits: np.ndarray, misses: np.ndarray) -> float:
    looked_up = int(hits.sum() + misses.sum())
    return int(hits.sum()) / looked_up if looked_up else 0.0


def label(cell: dict) -> str:
    fraction = f"1/{round(1 / cell['fraction'])}" if cell["fraction"] < 1 else f"{cell['fraction']:g}"
    where = "total" if cell["budget"] == "total" else "per replica"
    return f"{fraction} WS {where}" + (", LRU" if cell["admission"] == "all" else "")


def table(results: dict, budget: str, key: str) -> list[str]:
    """A markdown table of one budget kind: a row per series and routing, a column per replica count."""
    replicas = results["parameters"]["replicas"]
    head = "total budget (rows)" if budget == "total" else "budget per replica (rows)"
    lines = [f"| {head} | routing | " + " | ".join(f"R={r}" for r in replicas) + " |",
             "|---|---|" + "---:|" * len(replicas)]
    rows: dict[tuple, dict] = {}
    for cell in results["cells"]:
        if cell["budget"] == budget:
            rows.setdefault((cell["fraction"], cell["admission"], cell["routing"]), {})[cell["replicas"]] = cell
    for (fraction, _, routing), by_r in rows.items():
        first = next(iter(by_r.values()))
        total = round(fraction * results["working_set"])
        values = [f"{by_r[r][key]:.3f}" + ("*" if by_r[r]["requests_larger_than_cache"] > 0.5 else "") for r in replicas]
        lines.append(f"| {label(first)} ({total:,}) | {routing} | " + " | ".join(values) + " |")
    return lines


def markdown(results: dict) -> str:
    p = results["parameters"]
    setup = (f"Traffic: RepeatedUsers({', '.join(f'{k}={v}' for k, v in p['traffic'].items())}), seed {p['seed']}: "
             f"{p['requests']:,} requests; {p['distinct_profiles']} distinct user_features among {p['traffic']['users']} "
             f"users (requests are routed by user id). Row keys: {p['key_graph']} ({', '.join(p['keys'])}) of {p['repo']} "
             f"({p['build']['source']} model, {p['build']['precision']}, target {p['build']['target']}; without --repo the "
             "script builds the demo model so). "
             f"Working set (WS): {results['working_set']:,} distinct row keys. One RowCache a replica, TinyLFU admission "
             "unless marked LRU; affinity: a ketama ring of the user id, 160 points a replica; random: a uniformly random "
             "replica a request.")
    sizes = p["keys_per_request"]
    measure = ("Hit rate = distinct row keys found / distinct row keys looked up, summed over the replicas. A request has "
               f"{sizes['mean']:,.0f} distinct row keys on average (median {sizes['median']:,.0f}, max {sizes['max']:,}); "
               "* marks a cell where most requests have more than a replica's cache holds: such a request keeps none of "
               "its rows.")
    lines = ["# History row cache across replicas (simulated)", "",
             f"Reproduce: `{results['command']}` ({results['seconds']:.0f} s)", "",
             f"{results['machine']}; onnxruntime {results['versions']['onnxruntime']}, numpy {results['versions']['numpy']}", "",
             setup, "", measure, ""]
    for key, when in (("hit_rate_warm", f"visits 2-{p['traffic']['visits']} (each user's first visit is the warm-up)"),
                      ("hit_rate", "all visits (cold caches included)")):
        for budget, what in (("total", "fixed total budget, split evenly over the R replicas"),
                             ("per_replica", "fixed budget per replica")):
            lines += [f"## Hit rate over {when}: {what}", "", *table(results, budget, key), ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.8), dpi=100, sharey=True)
    for ax, budget, title in ((axes[0], "total", "fixed total budget, split over R"), (axes[1], "per_replica", "fixed budget per replica")):
        series: dict[tuple, list] = {}
        for cell in results["cells"]:
            if cell["budget"] == budget:
                series.setdefault((label(cell), cell["routing"]), []).append((cell["replicas"], cell["hit_rate_warm"]))
        colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(name for name, _ in series))}
        for (name, routing), points in series.items():
            x, y = zip(*sorted(points))
            ax.plot(x, y, color=colors[name], linestyle="-" if routing == "affinity" else "--", marker="o", markersize=3,
                    label=f"{name}, {routing}")
        for cell in results["cells"]:  # hollow: most requests are larger than a replica's cache, and keep nothing
            if cell["budget"] == budget and cell["requests_larger_than_cache"] > 0.5:
                ax.plot(cell["replicas"], cell["hit_rate_warm"], "o", markersize=5, markerfacecolor="white",
                        markeredgecolor=colors[label(cell)])
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["parameters"]["replicas"], [str(r) for r in results["parameters"]["replicas"]])
        ax.set_xlabel("replicas R")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"hit rate, visits 2-{results['parameters']['traffic']['visits']}")
    fig.suptitle(f"History row cache hit rate against replicas (simulated; WS = {results['working_set']:,} row keys; "
                 "solid: affinity, dashed: random; hollow: most requests larger than a replica's cache)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, help="a built repository (default: build the demo model into a temporary folder)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--visits", type=int, default=RepeatedUsers.visits)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicas", default="1,2,4,8,16,32,64")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache-sim"))
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo or build_demo(Path(tmp) / "repo")
        manifest = json.loads((repo / "manifest.json").read_text())
        config = STCAConfig.from_dict(manifest["model_config"])
        traffic = RepeatedUsers(users=args.users, visits=args.visits)
        requests = repeated_user_requests(config, traffic, seed=args.seed, n_candidates=1)  # candidates play no part
        session, keys, key_file = key_graph(repo)
        codes = request_keys(session, keys, requests)
    users = [f"user-{i % args.users}" for i in range(len(requests))]  # visit-major: request i is user i mod U's
    profiles = len(np.unique(np.stack([r["user_features"] for r in requests[: args.users]]), axis=0))
    del requests
    ws = working_set(codes)
    print(f"{len(codes)} requests, {ws} distinct row keys ({time.perf_counter() - start:.0f} s)", flush=True)
    replicas = [int(r) for r in args.replicas.split(",")]
    cells = plan(replicas, ws)
    run(cells, users, codes, args.visits, args.seed)
    results = {
        "suite": "cache_sim",  # a run of this script: compiler docs leaves its files to it
        "command": shlex.join([".venv/bin/python", "benchmarks/cache_sim.py", *sys.argv[1:]]),
        "parameters": {"traffic": asdict(traffic), "seed": args.seed, "replicas": replicas, "requests": len(codes),
                       "distinct_profiles": profiles, "keys_per_request": keys_per_request(codes), "model_config": asdict(config), "key_graph": key_file, "keys": keys,
                       "repo": str(args.repo) if args.repo else "a temporary folder",
                       "build": {"source": manifest["source"]["kind"], "precision": manifest["precision"], "target": manifest["target"]},
                       "ring_points_per_replica": Ring.POINTS},
        "working_set": ws,
        "machine": machine().describe(),
        "versions": versions(),
        "seconds": round(time.perf_counter() - start, 1),
        "cells": cells,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    plot(results, args.out / "hit_rate.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
