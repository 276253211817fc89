"""int8 and fp16 on demo models trained from several seeds: does each pass its gates, and what does int8 keep in float?

    .venv/bin/python benchmarks/int8_across_seeds.py --seeds 0 1 2 3 --work /tmp/seeds

Trains a demo-size model per seed (compiler.stca.train's defaults, other seed), builds it for the python target at
int8 (the cpu form, with the fallback of compiler.precision.int8_fallback) and at fp16, with default gates and cases,
and prints one row per build: passed or not, the layers int8 kept in float, the lowest gated mean Kendall tau and its
case, the largest labelled-set AUC delta, and the build's seconds. Names the CPU; about 5 minutes a seed on 2 cores.
"""

import argparse
import logging
from pathlib import Path

from compiler.build import BuildConfig, build
from compiler.core.machine import machine, versions
from compiler.precision.convert import PrecisionConfig
from compiler.stca.train import TrainConfig, train
from compiler.verify.gates import tau_gated


def row(seed: int, result) -> str:
    v = result.verification
    gated = [c for c in v.cases if tau_gated(v.thresholds, c)] or list(v.cases)
    lowest = min(gated, key=lambda c: c.kendall_tau_mean)
    kept = result.precisions.int8_kept_float or ()
    auc = max((abs(r["delta"]) for r in v.auc.values()), default=float("nan"))
    kept_names = ", ".join(f"{k.layer.half} {k.layer.node}" for k in kept) or "none"
    return (f"| {seed} | {result.precision} | {'yes' if v.passed else 'NO'} | {len(kept)} ({kept_names}) | "
            f"{lowest.kendall_tau_mean:.4f} at L={lowest.L} N={lowest.N} | {auc:.4f} | {result.build_seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--work", type=Path, required=True, help="checkpoints and builds go here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    m = machine()
    rows = []
    for seed in args.seeds:
        checkpoint = args.work / f"seed{seed}" / "checkpoint"
        if not (checkpoint / "model.safetensors").is_file():
            train(TrainConfig(seed=seed), checkpoint)
        for precision in ("int8", "fp16"):
            result = build(BuildConfig(out=args.work / f"seed{seed}" / precision, checkpoint=checkpoint,
                                       precision=PrecisionConfig(precision), accept_accuracy_loss=True))
            rows.append(row(seed, result))
    print(f"\n{m.describe()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print("| seed | precision | gates passed | int8 layers kept in float | lowest gated mean tau | largest AUC delta | build s |")
    print("|---:|---|---|---|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
