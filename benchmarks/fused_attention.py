"""What the fused attention pass (compiler/passes/fused_attention.py) changes in the scorer, on this CPU: its time, where
the time goes, how close the attention already was to the machine's GEMM rate, and the memory a request's scoring takes.

    .venv/bin/python benchmarks/fused_attention.py [--preset medium] [--loads 2000x128 10000x128 10000x512] [--threads 1 2]

The scorer of the preset's seeded model, fp32, exported and partitioned as a build does, "as exported" (MatMul, key-bias
Add, Softmax, MatMul per layer) against "fused" (what a CPU build serves), on the same cut the encoder computed:
  - time: median ms, the two scorers in turn within every round, so a drifting machine slows both alike (thread
    spinning off, as served, so neither's idle threads take the other's cores);
  - floor: the attention's FLOPs (compiler.stca.costmodel: 4 L D per candidate and layer) at the fp32 GEMM rate ONNX
    Runtime reaches on these threads (costmodel.gemm_peaks): no attention kernel runs faster than that; "rest" is the
    scorer's other FLOPs at the same rate;
  - by operator type: ONNX Runtime's profiler (mean ms per run; its overhead is its own: read the shares);
  - memory: the peak RSS a scorer run adds to a process that has run the encoder, each form in a child process of its own.
Prints markdown tables with the machine and versions.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from precision_latency import interleaved_ms, op_times_ms, top_ops  # this script's directory is on sys.path

from compiler.build import cut_model
from compiler.core.machine import machine, versions
from compiler.load.subject import Source, StcaSubject
from compiler.passes.fused_attention import fuse_attention
from compiler.runtime.ort import OrtGraph
from compiler.stca.checkpoint import seeded_model
from compiler.stca.costmodel import gemm_peaks, split_cost
from compiler.stca.data import sample_requests
from compiler.stca.model import STCAConfig, preset

FORMS = ("exported", "fused")


def load(text: str) -> tuple[int, int]:
    L, N = text.lower().split("x")
    return int(L), int(N)


def write_graphs(preset_name: str, directory: Path) -> tuple[STCAConfig, int]:
    """encoder.onnx, exported.onnx and fused.onnx (the scorer before and after the pass) in `directory`."""
    model = seeded_model(preset(preset_name))
    _, parts = cut_model(StcaSubject(model, Source("seeded")))
    fused, layers = fuse_attention(parts.scorer)
    for name, graph in (("encoder", parts.encoder), ("exported", parts.scorer), ("fused", fused)):
        onnx.save(graph, str(directory / f"{name}.onnx"))
    (directory / "config.json").write_text(json.dumps(model.config.to_dict()))
    return model.config, layers


def feeds(directory: Path, config: STCAConfig, L: int, N: int, threads: int) -> dict:
    """A request's inputs and the cut its encoder computed: what the scorer reads."""
    request = next(sample_requests(config, [L], seed=0, n_candidates=N)).inputs
    return {**request, **OrtGraph(directory / "encoder.onnx", threads).run(request)}


def peak_rss_added_mib(directory: Path, form: str, L: int, N: int, threads: int) -> float:
    """In a child process: MiB the scorer's two runs take above the resident memory before them (the scorer loaded,
    weights and all, and the encoder run and gone)."""
    out = subprocess.run([sys.executable, __file__, "--child", str(directory), form, str(L), str(N), str(threads)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def child(directory: Path, form: str, L: int, N: int, threads: int) -> None:
    config = STCAConfig.from_dict(json.loads((directory / "config.json").read_text()))
    scorer = OrtGraph(directory / f"{form}.onnx", threads, spinning=False)
    inputs = feeds(directory, config, L, N, threads)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the resident memory now (Linux >= 4.0)
    before = memory_kib("VmRSS")
    scorer.run(inputs)
    scorer.run(inputs)
    print((memory_kib("VmHWM") - before) / 1024)


def memory_kib(field: str) -> int:
    """This process's VmRSS (resident now) or VmHWM (its peak), in KiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="medium")
    p.add_argument("--loads", type=load, nargs="+", default=[(2_000, 128), (2_000, 512), (10_000, 128), (10_000, 512)], help="L x N, e.g. 10000x128")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    v, m = versions(), machine()
    with tempfile.TemporaryDirectory(prefix="fused-attention-") as scratch:
        directory = Path(scratch)
        config, layers = write_graphs(args.preset, directory)
        print(f"{m.describe()}, {m.platform}; onnxruntime {v['onnxruntime']}, torch {v['torch']}; the {args.preset} preset "
              f"(D={config.d_model}, {config.n_heads} heads, {layers} attention layers fused), fp32, median of {args.rounds} "
              "interleaved rounds\n")
        rows, ops = [], []
        for threads in args.threads:
            torch.set_num_threads(threads)
            peak = gemm_peaks()["onnxruntime"]
            scorers = {form: OrtGraph(directory / f"{form}.onnx", threads, spinning=False) for form in FORMS}
            for L, N in args.loads:
                inputs = feeds(directory, config, L, N, threads)
                outputs = {form: scorer.run(inputs) for form, scorer in scorers.items()}
                diff = max(float(np.abs(outputs["fused"][k] - outputs["exported"][k]).max()) for k in outputs["exported"])
                ms = interleaved_ms({form: lambda s=s: s.run(inputs) for form, s in scorers.items()}, args.rounds)
                attention = N * config.n_layers * 4 * L * config.d_model
                rest = split_cost(config, L, N).scorer_flops - attention
                memory = {form: peak_rss_added_mib(directory, form, L, N, threads) for form in FORMS}
                rows.append((L, N, threads, peak, ms, attention, rest, diff, memory))
                ops += [(L, N, threads, form, *op_times_ms(directory / f"{form}.onnx", inputs, threads)) for form in FORMS]
    print("| L | N | threads | GEMM GFLOP/s | as exported ms | fused ms | saved | attention floor ms | rest floor ms "
          "| scorer at % of GEMM rate (exported / fused) | max abs diff | peak RSS added MiB (exported / fused) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for L, N, threads, peak, ms, attention, rest, diff, memory in rows:
        floor = 1e3 * (attention + rest) / peak
        print(f"| {L} | {N} | {threads} | {peak / 1e9:.0f} | {ms['exported']:.1f} | {ms['fused']:.1f} | "
              f"{1 - ms['fused'] / ms['exported']:.0%} | {1e3 * attention / peak:.1f} | {1e3 * rest / peak:.1f} | "
              f"{floor / ms['exported']:.0%} / {floor / ms['fused']:.0%} | {diff:.1e} | "
              f"{memory['exported']:.0f} / {memory['fused']:.0f} |")
    print("\nWhere the scorer's time goes (profiled: mean ms per run, by operator type, the top 6):\n")
    print("| L | N | threads | scorer | profiled ms | by operator type |")
    print("|---:|---:|---:|---|---:|---|")
    for L, N, threads, form, total, by_op in ops:
        print(f"| {L} | {N} | {threads} | {form} | {total:.1f} | {top_ops(by_op)} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
