"""GPU check: TensorRT engines of the split model, their parity with PyTorch on the GPU, and their speed.

Run through benchmarks/gpu_check.sh on a host with a GPU and TensorRT. For each precision (fp16, int8):
export and split a seeded model of --preset, convert the halves (compiler.precision.convert, the same graphs a
build serves), build strongly typed plans (compiler.repository.engines), then compare the plans' scores with PyTorch
fp32 on CUDA and time each half with CUDA events.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compiler.core.contract import INPUT_NAMES, REQUEST_INPUTS
from compiler.core.errors import CompilerError
from compiler.core.log import configure, log
from compiler.core.metrics import kendall_tau
from compiler.passes.export import export
from compiler.passes.partition import split
from compiler.precision import calibrate
from compiler.precision.convert import PrecisionConfig, convert
from compiler.repository.engines import EngineConfig, Profile, TrtGraph, build_plans, gpu_info, require_tensorrt
from compiler.stca.checkpoint import seeded_model
from compiler.stca.data import sample_requests
from compiler.stca.model import preset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--history", type=int, default=10_000, help="L to time at")
    p.add_argument("--candidates", type=int, default=512, help="N to time at")
    p.add_argument("--precisions", default="fp16,int8")
    p.add_argument("--calibration-requests", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    configure()
    import torch

    trt = require_tensorrt()
    gpu = gpu_info()
    if gpu is None or not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU visible")
    config = preset(args.preset, max_history=args.history, max_candidates=max(args.candidates, 1_024))
    model = seeded_model(config)
    parts = split(export(model).model, REQUEST_INPUTS, model.cut_tensor_names())
    reference = model.to("cuda")
    profile = Profile({"L": (1, args.history, args.history), "N": (1, args.candidates, config.max_candidates)})
    timed = next(sample_requests(config, [args.history], seed=0, n_candidates=args.candidates)).inputs
    checks = list(sample_requests(config, [args.history, 100], seed=1, n_candidates=args.candidates))
    rows = [("PyTorch eager fp32", "whole model", _time(lambda: reference(*_cuda(torch, timed)), torch, args.repeats), None, None)]
    with tempfile.TemporaryDirectory() as tmp:
        cal = None
        if "int8" in args.precisions:
            cal = calibrate.generate(Path(tmp) / "cal", config, count=args.calibration_requests, n_candidates=128)
        for precision in args.precisions.split(","):
            halves = convert(parts, PrecisionConfig(precision, int8_high_precision="fp16"), cal)
            plans = build_plans({"encoder": halves.split.encoder, "scorer": halves.split.scorer}, (profile,), EngineConfig())
            encoder, scorer = TrtGraph(plans.plans["encoder"]), TrtGraph(plans.plans["scorer"])
            errors, taus = [], []
            for request in checks:
                with torch.no_grad():
                    expected = reference(*_cuda(torch, request.inputs)).cpu().numpy()
                got = scorer.run({**request.inputs, **encoder.run_device(request.inputs)})["scores"]
                errors.append(float(np.abs(got - expected).max()))
                taus += [kendall_tau(expected[:, t], got[:, t]) for t in range(expected.shape[1])]
            cut = encoder.run_device(timed)
            rows.append((f"TensorRT {precision}", "history encoder", _time(lambda: encoder.run_device(timed), torch, args.repeats),
                         max(errors), float(np.mean(taus))))
            rows.append((f"TensorRT {precision}", "candidate scorer", _time(lambda: scorer.run_device({**timed, **cut}), torch, args.repeats),
                         None, None))
    print(f"\nGPU {gpu['name']} (sm {gpu['compute_capability']}), TensorRT {trt.__version__}, torch {torch.__version__}; "
          f"preset {args.preset} (D={config.d_model}, M={config.n_layers}, attention {config.attention}), L={args.history}, N={args.candidates}\n")
    print("| engine | part | median ms | max abs error vs PyTorch | mean Kendall tau |")
    print("|---|---|---:|---:|---:|")
    for name, part, ms, err, tau in rows:
        print(f"| {name} | {part} | {ms:.2f} | {'-' if err is None else f'{err:.2e}'} | {'-' if tau is None else f'{tau:.4f}'} |")
    return 0


def _cuda(torch, inputs):
    return [torch.from_numpy(inputs[name]).cuda() for name in INPUT_NAMES]


def _time(fn, torch, repeats: int) -> float:
    """Median milliseconds of fn over `repeats` calls after 3 warm-up calls, timed with CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.no_grad():
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


if __name__ == "__main__":
    started = time.time()
    try:
        code = main()
    except CompilerError as e:
        log.error("gpu_check: %s", e)
        sys.exit(2)
    log.info("gpu_check: done in %.0f s", time.time() - started)
    sys.exit(code)
