"""A burst of several times the sustainable request rate for a minute: what is answered, how fast, what is refused,
and the memory the server holds meanwhile.

    .venv/bin/python benchmarks/overload.py --repo REPO [--history 5000] [--candidates 128] [--burst 3] [--seconds 60]
        [--deadline 3] [--record benchmarks/results/overload-NAME]

The repository is served as built. First the sustainable rate R is measured (requests per second with 4 requests
in flight, 10 s). Then requests are sent open-loop, evenly spaced, at burst x R for --seconds, over gRPC from CLIENT_THREADS threads,
each with a deadline of --deadline seconds and without retries (a caller that gives up), its latency counted from
when it was due. Every request is new (its own seed), L = --history, N = --candidates. Meanwhile the resident memory of the
server and its Python-backend processes is sampled every half second. Printed: the machine, R, the offered rate,
answered requests (per second, p50 and p99 of their latency), failed ones by error, peak resident memory against
what `compiler serve` measures the repository to need (compiler/serving/memory.py), and whether the server still
scores after the burst (compiler/serving/probe.py). --record writes the same lines, with the command, to
DIR/results.md.
"""

import argparse
import collections
import json
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

from compiler.core.machine import machine, versions
from compiler.serving import memory
from compiler.serving.client import ScoringClient
from compiler.serving.probe import probe
from compiler.serving.server import ServerConfig, TritonServer, resident_bytes, stub_processes
from compiler.stca.data import sample_requests
from compiler.stca.model import STCAConfig


CLIENT_THREADS = 32  # each its own gRPC channel; hundreds of them took the 2 cores from the server


def requests_of(config: STCAConfig, history: int, candidates: int, count: int, seed: int) -> list[dict]:
    return [r.inputs for r in sample_requests(config, [history] * count, seed=seed, n_candidates=candidates)]


def resident(server: TritonServer) -> int:
    return resident_bytes(server.process.pid) + sum(s.resident_bytes for s in stub_processes(server.process.pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--history", type=int, default=5_000)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--burst", type=float, default=3.0, help="offered rate over the sustainable one")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=3.0, help="seconds a caller waits for an answer")
    parser.add_argument("--record", type=Path, help="a folder to write results.md into")
    args = parser.parse_args()
    config = STCAConfig.from_dict(json.loads((args.repo / "manifest.json").read_text())["model_config"])
    with TritonServer(ServerConfig.on_free_ports(args.repo)) as server:
        needed = memory.measure(server, memory.memory_limit())
        local = threading.local()

        def client() -> ScoringClient:
            if not hasattr(local, "client"):
                local.client = ScoringClient(server.cfg.grpc_url, protocol="grpc", retries=0, timeout_s=args.deadline)
            return local.client

        def send(request: dict, start: float | None = None) -> tuple[float, str]:
            """(seconds from `start`, its scheduled send time, to the answer; "ok" or the error's kind)."""
            start = time.perf_counter() if start is None else start
            try:
                client().score(request)
                return time.perf_counter() - start, "ok"
            except InferenceServerException as e:
                return time.perf_counter() - start, e.status() or e.message()[:60]
            except Exception as e:  # noqa: BLE001  (counted by kind)
                return time.perf_counter() - start, type(e).__name__

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, requests_of(config, args.history, args.candidates, 8, seed=1)))  # warm-up
            start, done = time.perf_counter(), 0
            while time.perf_counter() - start < 10:  # new requests, as in the burst: a repeated one is cheaper
                list(pool.map(send, requests_of(config, args.history, args.candidates, 8, seed=100 + done)))
                done += 8
            rate = done / (time.perf_counter() - start)
        offered = args.burst * rate
        count = int(offered * args.seconds)
        burst = requests_of(config, args.history, args.candidates, count, seed=2)
        peak, sampling = [resident(server)], threading.Event()

        def sample():
            while not sampling.wait(0.5):
                peak.append(resident(server))

        sampler = threading.Thread(target=sample)
        sampler.start()
        results, began = [], time.perf_counter()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:  # a refusal is quick, so few threads keep up
            futures = []
            for k, request in enumerate(burst):
                due = began + k / offered
                time.sleep(max(0.0, due - time.perf_counter()))
                futures.append(pool.submit(send, request, due))  # latency from when it was due: a slow client counts
            results = [f.result() for f in futures]
        elapsed = time.perf_counter() - began
        sampling.set()
        sampler.join()
        time.sleep(2)
        after = probe(server.cfg.http_url)
    answered = sorted(latency for latency, outcome in results if outcome == "ok")
    failed = collections.Counter(outcome for _, outcome in results if outcome != "ok")
    m, v = machine(), versions()
    model = config.to_dict()
    lines = [f"{m.describe()}; onnxruntime {v['onnxruntime']}; tritonserver {v.get('tritonserver', '?')}",
             (f"model D={model.get('n_heads', 0) * model.get('head_dim', 0)}, L={args.history}, N={args.candidates}; sustainable "
              f"{rate:.1f} req/s (4 in flight); offered {offered:.1f} req/s ({args.burst:g}x) for {elapsed:.0f} s, {count} "
              f"requests, deadline {args.deadline:g} s, gRPC, no retries")]
    if answered:
        lines.append(f"answered {len(answered)} ({len(answered) / elapsed:.1f} req/s): p50 {1e3 * np.percentile(answered, 50):.0f} ms, "
                     f"p99 {1e3 * np.percentile(answered, 99):.0f} ms, max {1e3 * answered[-1]:.0f} ms")
    lines.append(f"failed {sum(failed.values())}: " + (", ".join(f"{n} {kind}" for kind, n in failed.most_common()) or "none"))
    lines.append(f"peak resident {max(peak) >> 20} MiB (server and its Python-backend processes); serve's measured need "
                 f"{needed.total >> 20} MiB once the row caches fill ({needed.largest})")
    lines.append(f"after the burst: {'scores' if after.ok else 'does not score: ' + after.detail}")
    print("\n".join(lines))
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
        command = shlex.join([".venv/bin/python", "benchmarks/overload.py", *sys.argv[1:]])
        (args.record / "results.md").write_text(f"# Overload\n\nReproduce: `{command}`\n\n" + "\n\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
