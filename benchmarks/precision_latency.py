"""CPU latency of each half per precision: encoder and scorer of built repositories, in ONNX Runtime, in-process.

    .venv/bin/python benchmarks/precision_latency.py fp32=triton_repo_fp32 int8=triton_repo_int8 [--history 2000 10000] [--candidates 128]

Prints a markdown table (median ms over --repeats runs after 3 warm-ups) with the machine and versions.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from compiler.build import machine, versions
from compiler.data import sample_requests
from compiler.names import ENCODER, SCORER
from compiler.model import STCAConfig
from compiler.runtime import OrtGraph


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", help="label=repository")
    p.add_argument("--history", type=int, nargs="+", default=[2_000, 10_000])
    p.add_argument("--candidates", type=int, nargs="+", default=[128])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    rows = []
    for spec in args.builds:
        label, repo = spec.split("=", 1)
        repo = Path(repo)
        config = STCAConfig.from_dict(json.loads((repo / "manifest.json").read_text())["model_config"])
        encoder, scorer = OrtGraph(repo / ENCODER / "1" / "model.onnx"), OrtGraph(repo / SCORER / "1" / "model.onnx")
        for L in args.history:
            for N in args.candidates:
                request = next(sample_requests(config, [L], seed=0, n_candidates=N)).inputs
                cut = encoder.run(request)
                rows.append((label, L, N, median_ms(lambda: encoder.run(request), args.repeats),
                             median_ms(lambda: scorer.run({**request, **cut}), args.repeats)))
    v, m = versions(), machine()
    print(f"{m['processor']}, {m['cpus']} CPUs, {m['platform']}; onnxruntime {v['onnxruntime']}, {args.repeats} runs each\n")
    print("| build | L | N | encoder ms | scorer ms |")
    print("|---|---:|---:|---:|---:|")
    for label, L, N, enc, sc in rows:
        print(f"| {label} | {L} | {N} | {enc:.2f} | {sc:.2f} |")


if __name__ == "__main__":
    main()
