"""Where a served request's CPU time goes, on repeated-user traffic: the client, Triton's own process, the models'
Python-backend stubs, and of the stubs' time what ONNX Runtime ran.

    .venv/bin/python benchmarks/core_time.py --repo REPO [--users 8] [--visits 12] [--concurrency 1 2 4]

REPO is a python-target build (`python -m compiler build --preset medium --baselines stca_fused`: its `stca` serves
through stca_split, which holds the row cache). The same traffic as the repeated-users suite (compiler.stca.data.
RepeatedUsers, a fresh set of users per concurrency level, after a warm-up of other users) is sent once, in order,
by `concurrency` client threads in this process, to `stca` and then to `stca_fused` on one server. Per request it
records the CPU seconds (user + system, from /proc and getrusage) of this client process, of tritonserver, and of
the stubs; and Triton's compute_infer of the model and, inside stca_split, its two halves (stca_split_half_ms). On
a machine whose every core serves, a request costs the sum of those CPU times, not its compute alone: the client and
the server's I/O take cores from the models once the concurrency fills them.
"""

import argparse
import json
import os
import resource
from pathlib import Path

from compiler.core.machine import machine, versions
from compiler.core.names import ENSEMBLE, FUSED, SPLIT
from compiler.measure.bench_repeated import drive, level_requests, warmup_requests
from compiler.repository.reader import composing
from compiler.serving import server_stats
from compiler.serving.server import ServerConfig, TritonServer, stub_processes
from compiler.stca.data import RepeatedUsers
from compiler.stca.model import STCAConfig

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def client_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--visits", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    config = STCAConfig.from_dict(json.loads((args.repo / "manifest.json").read_text())["model_config"])
    traffic = RepeatedUsers(users=args.users, visits=args.visits)
    warmup = warmup_requests(config, traffic, 4, args.candidates)
    served = composing(args.repo)
    print(f"{machine().describe()}; {versions()['onnxruntime']} onnxruntime; {args.users} users x {args.visits} visits "
          f"per level, N={args.candidates}")
    print("\n| model | conc. | req/s | compute_infer ms | (halves: encoder + scorer) | CPU ms per request: client | "
          "tritonserver | stubs | total | 1000 x cores / total |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    with TritonServer(ServerConfig.on_free_ports(args.repo)) as triton:
        url, metrics, pid = triton.cfg.http_url, triton.cfg.metrics_url, triton.process.pid
        cores = len(os.sched_getaffinity(0))
        for model in (ENSEMBLE, FUSED):
            drive(url, model, warmup, 1)
            for concurrency in args.concurrency:
                requests = level_requests(config, traffic, concurrency, args.candidates)
                stubs = [s.pid for s in stub_processes(pid)]
                before = (client_seconds(), cpu_seconds(pid), sum(cpu_seconds(p) for p in stubs))
                stats, halves = server_stats.snapshot(url), server_stats.split_half_ms(metrics)
                driven = drive(url, model, requests, concurrency)
                after = (client_seconds(), cpu_seconds(pid), sum(cpu_seconds(p) for p in stubs))
                stages = server_stats.since(url, before=stats, models=served[model])
                n = len(requests)
                client, server, stub = (1e3 * (b - a) / n for a, b in zip(before, after))
                compute = sum(t.compute_infer_ms for t in stages)
                split = (server_stats.halves_since(metrics, halves, stages[0].requests) if served[model] == (SPLIT,) else None)
                total = client + server + stub
                print(f"| {model} | {concurrency} | {n / driven.seconds:.1f} | {compute:.1f} | "
                      + (f"{split['encoder']:.1f} + {split['scorer']:.1f}" if split else "-")
                      + f" | {client:.1f} | {server:.1f} | {stub:.1f} | {total:.1f} | {1e3 * cores / total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
