"""Two replicas on one machine: what routing by user does to the history row cache, against one server.

    .venv/bin/python benchmarks/replicas.py --repo REPO [--users 96] [--visits 6] [--candidates 64]
        [--budget-fraction 0.5] [--concurrency 2] [--record benchmarks/results/replicas-NAME]

REPO is a python-target build (`python -m compiler build`, the default layout: stca_split holds the row cache). The
traffic is the repeated-users model (compiler.stca.data.RepeatedUsers: --users users, --visits visits each,
histories growing and aging, Zipf items; each round of visits in a new order of users), sent once, in order, from
--concurrency client threads; every request carries its user's routing key (ScoringClient). Its working set W (the distinct history rows over the
whole traffic) is counted here, in process, with the repository's own key graph, and the row cache's total budget B
is set to --budget-fraction x W rows, so it cannot hold every user's rows and routing matters. Each way of serving
starts cold, on the same cores (all of this machine's) and the same total budget:

  one server            the repository as built: stca_split's planned instances, processes sharing one cache of B
  one server, one process  stca_split as one instance on every core, holding B
  2 replicas, affinity   two servers, one per share of the cores, B/2 each, behind nginx hashing the user key
  2 replicas, round-robin  the same behind nginx's round-robin
  ... replica 0 killed midway  affinity, and replica 0's server and model processes SIGKILLed when half the traffic
                        is sent (nothing heals it here): every answer must still come, through the proxy's retries
                        (the client does not retry); its hit rate is the survivor's, whole run and after the kill;
                        what the kill cost the clients (failover): the requests in flight at it (the kill comes
                        while the middle request is), the longest of them, how long after the kill the last of them
                        was answered (the recovery time), latency before and after, the requests nginx re-sent (its
                        error log); and each request's latency against when it was sent (latency_timeline.png)

Simulated beside them: the same traffic through a cache whose rows are keyed by user too (no row shared between
users), on the same number of rows: what routing by user would give a cache it matched exactly.

Recorded per way: the hit rate over the traffic (distinct row keys found over those looked up, summed over every
process's cache), throughput (requests over wall time) and p50/p99 latency; and how many users each replica served.
The cache is consulted on every request (history_cache_skip 0): where a full cache stops paying, the served default
answers some requests with the whole encoder without looking (CacheWorth), which would leave them out of the hit rate.
"""

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from cache_sim import key_graph, request_keys, simulate, working_set  # benchmarks/cache_sim.py, beside this file

from compiler.core.machine import machine, versions
from compiler.core.names import ENSEMBLE, SPLIT
from compiler.measure.bench_repeated import Driven, drive
from compiler.measure.docs_tables import own_markdown
from compiler.repository import budget, manifest
from compiler.repository.budget import Placement
from compiler.repository.reader import cache_holder, linked_copy, read_config, update_config
from compiler.runtime.row_cache import RowSpec, entry_bytes
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.replicas import Replicas, ReplicasConfig
from compiler.serving.routing import user_key
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from compiler.stca.model import STCAConfig

KILLED = "2 replicas, affinity, replica 0 killed midway"
WAYS = ("one server", "one server, one process", "2 replicas, affinity", "2 replicas, round-robin", KILLED)
COUNTERS = ("hits", "misses", "evictions")


def served_entry_bytes(repo: Path) -> int:
    """The bytes one cached row costs in the served cache: its outputs' rows, its key, the cache's overhead."""
    spec = json.loads(read_config(repo / cache_holder(repo) / "config.pbtxt").parameters["history_cache"].string_value)
    rows = sum(RowSpec(dtype, tuple(shape)).nbytes for dtype, shape in spec["rows"].values())
    return entry_bytes(rows, len(spec["keys"]))


def with_budget(repo: Path, copy: Path, budget_bytes: int, placement: Placement | None = None) -> Path:
    """A hard-linked copy of `repo` whose row cache budget is `budget_bytes`, always consulted (and stca_split's
    placement, if given)."""
    def change(config):
        config.parameters["history_cache_bytes"].string_value = str(budget_bytes)
        config.parameters["history_cache_skip"].string_value = "0"

    linked_copy(repo, copy, with_manifest=True)  # Replicas reads the build record
    update_config(copy, cache_holder(repo), change)
    if placement is not None:
        budget.write_placements(copy, {SPLIT: placement})
    return copy


def cache_counters(servers: list[TritonServer]) -> dict[str, float]:
    """The row caches' counters summed over every process of `servers` that holds one."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for server in servers:
        got = server_stats.history_cache_counters(server.cfg.metrics_url, cache_holder(server.cfg.repo))
        totals = {name: totals[name] + got.get(name, 0.0) for name in COUNTERS}
    return totals


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float:
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return hits / (hits + misses) if hits + misses else 0.0


def measure(servers: list[TritonServer], url: str, requests: list[dict], concurrency: int, midway=None) -> tuple[dict, Driven]:
    """Drive the traffic through `url` (no client retries: a lost answer stops the run); the hit rate over `servers`."""
    before = cache_counters(servers)
    driven = drive(url, ENSEMBLE, requests, concurrency, retries=0, midway=midway)
    after = cache_counters(servers)
    latencies = driven.latencies_ms
    return {"throughput": len(requests) / driven.seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "max_ms": max(latencies), "hit_rate": hit_rate(before, after),
            **{name: after[name] - before[name] for name in COUNTERS}}, driven


UPSTREAM_FAILURES = {  # nginx's error.log context for a request it could not finish on a replica (and sent on)
    "connect": "while connecting to upstream",  # the replica's port refused it
    "send": "while sending request to upstream",  # a kept-alive connection to it was dead
    "answer": "while reading response header from upstream",  # it died with the request in flight
}


def failover(driven: Driven, proxy_errors: str) -> dict:
    """What the kill at driven.midway_s cost the clients: the requests in flight at it (on either replica) and the
    longest of them; the recovery time, from the kill until the last of them was answered (the survivor answered every
    request sent after it); latencies before and after; and from nginx's error log (`proxy_errors`), how many
    requests it re-sent to the survivor, by where they failed on the dead replica (UPSTREAM_FAILURES)."""
    kill = driven.midway_s
    spans = [(sent, sent + ms / 1e3, ms) for sent, ms in zip(driven.sent_s, driven.latencies_ms)]
    in_flight = [(end, ms) for sent, end, ms in spans if sent < kill < end]
    before = [ms for _, end, ms in spans if end <= kill]
    after = [ms for sent, _, ms in spans if sent >= kill]
    lines = [line for line in proxy_errors.splitlines() if "[error]" in line]  # not "[warn] ... temporarily disabled"
    return {"kill_s": kill, "in_flight_at_kill": len(in_flight), "longest_in_flight_ms": max((ms for _, ms in in_flight), default=0.0),
            "recovery_s": max((end - kill for end, _ in in_flight), default=0.0),
            "resent": {where: sum(context in line for line in lines) for where, context in UPSTREAM_FAILURES.items()},
            "p50_ms_before": float(np.percentile(before, 50)), "p99_ms_before": float(np.percentile(before, 99)),
            "p50_ms_after": float(np.percentile(after, 50)), "p99_ms_after": float(np.percentile(after, 99)),
            "timeline": {"sent_s": driven.sent_s, "latency_ms": driven.latencies_ms}}


def plot_timeline(path: Path, results: dict) -> None:
    """Each request's latency against when it was sent, the kill marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lost = results["ways"][KILLED]["failover"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.scatter(lost["timeline"]["sent_s"], lost["timeline"]["latency_ms"], s=6)
    ax.axvline(lost["kill_s"], color="red", linestyle="--", label="replica 0 SIGKILLed")
    ax.set(xlabel="sent at (s)", ylabel="latency (ms)", title=f"{KILLED}: every request's latency")
    ax.legend()
    fig.text(0.01, 0.01, results["machine"], fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def kill_midway(group: Replicas) -> tuple[dict, Callable[[], None]]:
    """(what it records, a `midway` for drive that SIGKILLs replica 0's server and model processes and notes the
    survivor's counters at that moment)."""
    record = {}

    def kill():
        record["survivor_at_kill"] = cache_counters(group.servers[1:])
        os.killpg(group.servers[0].process.pid, signal.SIGKILL)

    return record, kill


def placement(servers: list[TritonServer], url: str, requests: list[dict], keys: list[str]) -> dict[str, int]:
    """After the traffic: each user's replica, found by sending the user's first request once more and seeing whose
    count grows."""
    first = {}
    for key, request in zip(keys, requests):
        first.setdefault(key, request)
    home = {}
    client = ScoringClient(url, "http", timeout_s=600.0)
    try:
        for key, request in first.items():
            before = [server_stats.answered(s.cfg.http_url, ENSEMBLE) for s in servers]
            client.score(request)
            time.sleep(0.05)
            after = [server_stats.answered(s.cfg.http_url, ENSEMBLE) for s in servers]
            home[key] = int(np.argmax(np.subtract(after, before)))
    finally:
        client.close()
    return home


def simulated_rate(keys: list[str], codes: list[np.ndarray], capacity: int, replicas: int, routing: str,
                   home: dict[str, int] | None = None) -> float:
    """The hit rate benchmarks/cache_sim.py's simulation (the served RowCache, requests in order, one at a time)
    predicts for `replicas` caches sharing `capacity` rows, the requests routed by `routing` or, given `home`, each
    user to the replica nginx placed it on."""
    placed = np.array([home[k] for k in keys]) if home is not None else None
    hits, misses = simulate(keys, codes, replicas, routing, capacity // replicas, placed=placed)
    return float(hits.sum() / (hits.sum() + misses.sum()))


def simulated(keys: list[str], codes: list[np.ndarray], capacity: int, home: dict[str, int]) -> dict[str, float]:
    """simulated_rate for each way, `capacity` rows in all: one cache (one server, however many processes share it);
    two caches, requests spread at random (round-robin); two caches with each user where nginx placed it (`home`)."""
    one = simulated_rate(keys, codes, capacity, 1, "random")
    return {"one server": one, "one server, one process": one,
            "2 replicas, affinity": simulated_rate(keys, codes, capacity, 2, "affinity", home),
            "2 replicas, round-robin": simulated_rate(keys, codes, capacity, 2, "random")}


def keyed_by_user(keys: list[str], codes: list[np.ndarray]) -> list[np.ndarray]:
    """Each request's row keys with its user's number as one more key column: the rows of a cache no two users share."""
    number = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return [np.hstack([np.full((len(c), 1), number[k], c.dtype), c]) for k, c in zip(keys, codes)]


def user_keyed(keys: list[str], codes: list[np.ndarray], capacity: int, home: dict[str, int]) -> dict:
    """The counterfactual of a cache keyed by user (keyed_by_user), simulated on the same capacity in rows: its working
    set, and the hit rates of one server and of two replicas with each user where nginx placed it."""
    own = keyed_by_user(keys, codes)
    return {"working_set_rows": working_set(own), "one server": simulated_rate(keys, own, capacity, 1, "random"),
            "2 replicas, affinity": simulated_rate(keys, own, capacity, 2, "affinity", home)}


def duplication(keys: list[str], codes: list[np.ndarray], home: dict[str, int]) -> float:
    """The replicas' working sets added up, over the whole traffic's: how much of the rows both replicas need."""
    total = working_set(codes)
    return sum(working_set([c for k, c in zip(keys, codes) if home[k] == r]) for r in set(home.values())) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--users", type=int, default=96)
    parser.add_argument("--visits", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--budget-fraction", type=float, default=0.5, help="the total row cache budget over the working set")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--record", type=Path, help="a folder to write results.json and results.md into")
    args = parser.parse_args()
    repo = args.repo.resolve()
    config = STCAConfig.from_dict(json.loads((repo / "manifest.json").read_text())["model_config"])
    traffic = RepeatedUsers(users=args.users, visits=args.visits)
    visit_major = repeated_user_requests(config, traffic, seed=24, n_candidates=args.candidates)
    # users in a new order each round of visits: in a fixed order, round-robin over two replicas would send each user to
    # the same one every visit (with an even number of users), which is affinity by accident
    rng = np.random.default_rng(24)
    requests = [visit_major[v * args.users + u] for v in range(args.visits) for u in rng.permutation(args.users)]
    keys = [user_key(r, manifest.read(repo).contract) for r in requests]
    session, key_names, _ = key_graph(repo)
    codes, entry = request_keys(session, key_names, requests), served_entry_bytes(repo)
    working = working_set(codes)
    capacity = int(args.budget_fraction * working)  # rows
    budget_bytes = capacity * entry
    results = {"suite": "replicas", "machine": machine().describe(), "versions": versions(), "traffic": asdict(traffic), "candidates": args.candidates,
               "concurrency": args.concurrency, "requests": len(requests), "users": len(set(keys)),
               "mean_history": statistics.mean(len(r["history_item_ids"]) for r in requests), "working_set_rows": working,
               "entry_bytes": entry, "budget_fraction": args.budget_fraction, "budget_bytes": budget_bytes, "ways": {}}
    print(f"{len(requests)} requests, {len(set(keys))} users, working set {working} rows x {entry} B; "
          f"total budget {budget_bytes >> 10} KiB ({args.budget_fraction:g} of it)")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="stca-replicas-bench-") as scratch:
        scratch = Path(scratch)
        built = with_budget(repo, scratch / "one-server", budget_bytes)
        one_process = with_budget(repo, scratch / "one-process", budget_bytes, Placement(1, cores))
        for way in WAYS:
            if way.startswith("one server"):
                with TritonServer(ServerConfig.on_free_ports(built if way == "one server" else one_process)) as server:
                    row, _ = measure([server], server.cfg.http_url, requests, args.concurrency)
            elif way == KILLED:
                with Replicas(ReplicasConfig(built, 2, "affinity", http_port=0, grpc_port=0)) as group:
                    record, kill = kill_midway(group)
                    row, driven = measure(group.servers[1:], group.proxy.cfg.http_url, requests, args.concurrency, midway=kill)
                    row["survivor_hit_rate_after_kill"] = hit_rate(record["survivor_at_kill"], cache_counters(group.servers[1:]))
                    row["failover"] = failover(driven, group.proxy.error_log())
            else:
                route = way.split(", ")[1]
                with Replicas(ReplicasConfig(built, 2, route, http_port=0, grpc_port=0)) as group:
                    row, _ = measure(group.servers, group.proxy.cfg.http_url, requests, args.concurrency)
                    home = placement(group.servers, group.proxy.cfg.http_url, requests, keys)
                    row["users_per_replica"] = [sum(r == i for r in home.values()) for i in range(2)]
                    if route == "affinity":
                        results["working_set_over_replicas"] = duplication(keys, codes, home)
                        results["simulated"] = simulated(keys, codes, capacity, home)
                        results["user_keyed"] = user_keyed(keys, codes, capacity, home)
            results["ways"][way] = row
            print(f"{way}: hit rate {row['hit_rate']:.3f}, {row['throughput']:.1f} req/s"
                  + (f", users per replica {row['users_per_replica']}" if "users_per_replica" in row else ""))
    results["command"] = shlex.join([".venv/bin/python", "benchmarks/replicas.py", *sys.argv[1:]])
    print(own_markdown(results))
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
        (args.record / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.record / "results.md").write_text(own_markdown(results))
        plot_timeline(args.record / "latency_timeline.png", results)


if __name__ == "__main__":
    main()
