"""CPU latency of each half per precision: encoder and scorer of built repositories, in ONNX Runtime, in-process.

    .venv/bin/python benchmarks/precision_latency.py fp32=triton_repo_fp32 int8=triton_repo_int8 [--history 2000 10000] [--candidates 128] [--threads 1] [--ops] [--ab]

Prints a markdown table (median ms over --repeats runs after 3 warm-ups) with the machine and versions, and
the unsplit graph where the repository has it (--baselines); --ops adds where each half's time goes, per
operator type (ONNX Runtime's profiler, which adds overhead of its own: read the shares, not the totals);
--ab times the builds' splits interleaved, one run of each in turn per round, so a drifting machine (a shared
VM) slows them alike: the way to compare two builds that differ by a few percent.
Against Triton's per-model statistics of the same repository this is what serving adds: the split's stub copies and round trips (docs/benchmarks.md).
"""

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compiler.core.machine import machine, versions
from compiler.core.names import FUSED
from compiler.repository.reader import half_files
from compiler.runtime.ort import OrtGraph
from compiler.stca.data import sample_requests
from compiler.stca.model import STCAConfig


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def op_times_ms(path: Path, feeds: dict, threads: int, runs: int = 5) -> tuple[float, Counter]:
    """Mean ms per run of the whole graph and of each operator type (kernel time), after one warm-up run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    options.enable_profiling, options.profile_file_prefix = True, os.path.join(tempfile.gettempdir(), "precision_latency")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    for _ in range(1 + runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    graph_runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][1:]  # after the warm-up
    by_op = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= graph_runs[0]["ts"]:
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return sum(e["dur"] for e in graph_runs) / 1e3 / runs, by_op


def top_ops(by_op: Counter, top: int = 6) -> str:
    """op_times_ms' operator types as a table cell: the `top` slowest, then the rest as "other"."""
    slowest = by_op.most_common(top)
    rest = sum(by_op.values()) - sum(ms for _, ms in slowest)
    return ", ".join(f"{op} {ms:.1f}" for op, ms in slowest) + f", other {rest:.1f}"


def interleaved_ms(runs: dict, rounds: int) -> dict[str, float]:
    """Median ms of each callable, after one warm-up run each; within every round each runs once, in turn, so a
    drifting machine slows them alike."""
    for run in runs.values():
        run()
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: 1e3 * float(np.median(t)) for label, t in times.items()}


def split_runs(splits: dict, L: int, N: int) -> dict:
    """Each build's encoder + scorer on one request of L history items and N candidates, as a callable."""
    runs = {}
    for label, (config, encoder, scorer) in splits.items():
        request = next(sample_requests(config, [L], seed=0, n_candidates=N)).inputs
        runs[label] = lambda request=request, encoder=encoder, scorer=scorer: scorer.run({**request, **encoder.run(request)})
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", help="label=repository")
    p.add_argument("--history", type=int, nargs="+", default=[2_000, 10_000])
    p.add_argument("--candidates", type=int, nargs="+", default=[128])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per session (default 0: one per core)")
    p.add_argument("--ops", action="store_true", help="also the time per operator type in each half (profiled runs)")
    p.add_argument("--ab", action="store_true", help="also the builds' encoder + scorer timed interleaved, round by round")
    args = p.parse_args()
    rows, ops, splits = [], [], {}
    for spec in args.builds:
        label, repo = spec.split("=", 1)
        repo = Path(repo)
        config = STCAConfig.from_dict(json.loads((repo / "manifest.json").read_text())["model_config"])
        # spinning off: the sessions take turns on the same cores (with --ab, round by round), and a spinning session's
        # idle threads slow the next one (the same 2-thread scorer, L=2,000 N=128: 57 ms in one run, 24 with it off)
        encoder, scorer = (OrtGraph(path, args.threads, spinning=False) for path in half_files(repo))
        fused = OrtGraph(repo / FUSED / "1" / "model.onnx", args.threads, spinning=False) if (repo / FUSED).is_dir() else None
        splits[label] = (config, encoder, scorer)
        for L in args.history:
            for N in args.candidates:
                request = next(sample_requests(config, [L], seed=0, n_candidates=N)).inputs
                cut = encoder.run(request)
                if args.ops:
                    for half, path in zip(("encoder", "scorer"), half_files(repo)):
                        ops.append((label, L, N, half, *op_times_ms(path, {**request, **cut}, args.threads)))
                rows.append((label, L, N, median_ms(lambda: encoder.run(request), args.repeats),
                             median_ms(lambda: scorer.run({**request, **cut}), args.repeats),
                             median_ms(lambda: fused.run(request), args.repeats) if fused else None))
    v, m = versions(), machine()
    print(f"{m.describe()}, {m.platform}; onnxruntime {v['onnxruntime']}, "
          f"{args.threads or 'one per core'} threads, {args.repeats} runs each\n")
    print("| build | L | N | encoder ms | scorer ms | encoder + scorer | fused ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, L, N, enc, sc, whole in rows:
        print(f"| {label} | {L} | {N} | {enc:.2f} | {sc:.2f} | {enc + sc:.2f} | {'-' if whole is None else f'{whole:.2f}'} |")
    if args.ab:
        print(f"\nInterleaved: encoder + scorer of each build, one run each in turn, median of {args.repeats} rounds:\n")
        print("| L | N | " + " | ".join(f"{label} ms" for label in splits) + " | " + " | ".join(f"{label} / {next(iter(splits))}" for label in splits) + " |")
        print("|---:|---:|" + "---:|" * (2 * len(splits)))
        for L in args.history:
            for N in args.candidates:
                medians = interleaved_ms(split_runs(splits, L, N), args.repeats)
                first = next(iter(medians.values()))
                print(f"| {L} | {N} | " + " | ".join(f"{ms:.1f}" for ms in medians.values()) + " | "
                      + " | ".join(f"{ms / first:.3f}" for ms in medians.values()) + " |")
    if ops:
        print("\nWhere each half's time goes (profiled: mean ms per run, by operator type; the top 6, then the rest):\n")
        print("| build | L | N | half | profiled ms | by operator type |")
        print("|---|---:|---:|---|---:|---|")
        for label, L, N, half, total, by_op in ops:
            print(f"| {label} | {L} | {N} | {half} | {total:.1f} | {top_ops(by_op)} |")


if __name__ == "__main__":
    main()
