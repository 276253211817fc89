"""CPU latency of each half per precision: encoder and scorer of built repositories, in ONNX Runtime, in-process.

    .venv/bin/python benchmarks/precision_latency.py fp32=triton_repo_fp32 int8=triton_repo_int8 [--history 2000 10000] [--candidates 128] [--threads 1]

Prints a markdown table (median ms over --repeats runs after 3 warm-ups) with the machine and versions, and
the unsplit graph where the repository has it (--baselines). Against Triton's per-model statistics of the
same repository this is what serving adds: the split's stub copies and round trips (docs/benchmarks.md).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from compiler.build import machine, versions
from compiler.data import sample_requests
from compiler.emit import half_files
from compiler.names import FUSED
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
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per session (default 0: one per core)")
    args = p.parse_args()
    rows = []
    for spec in args.builds:
        label, repo = spec.split("=", 1)
        repo = Path(repo)
        config = STCAConfig.from_dict(json.loads((repo / "manifest.json").read_text())["model_config"])
        encoder, scorer = (OrtGraph(path, args.threads) for path in half_files(repo))
        fused = OrtGraph(repo / FUSED / "1" / "model.onnx", args.threads) if (repo / FUSED).is_dir() else None
        for L in args.history:
            for N in args.candidates:
                request = next(sample_requests(config, [L], seed=0, n_candidates=N)).inputs
                cut = encoder.run(request)
                rows.append((label, L, N, median_ms(lambda: encoder.run(request), args.repeats),
                             median_ms(lambda: scorer.run({**request, **cut}), args.repeats),
                             median_ms(lambda: fused.run(request), args.repeats) if fused else None))
    v, m = versions(), machine()
    print(f"{m['cpu_model']} ({' '.join(m['isa'])}), {m['cpus']} CPUs, {m['platform']}; onnxruntime {v['onnxruntime']}, "
          f"{args.threads or 'one per core'} threads, {args.repeats} runs each\n")
    print("| build | L | N | encoder ms | scorer ms | encoder + scorer | fused ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, L, N, enc, sc, whole in rows:
        print(f"| {label} | {L} | {N} | {enc:.2f} | {sc:.2f} | {enc + sc:.2f} | {'-' if whole is None else f'{whole:.2f}'} |")


if __name__ == "__main__":
    main()
