"""What the layer-norm rows pass (compiler/passes/layer_norm_rows.py) saves: ONNX Runtime's fused SkipLayerNormalization
against Add + LayerNormalization on the rows, for one norm and for the whole STCA graph, on this CPU.

    .venv/bin/python benchmarks/layer_norm_rows.py [--preset medium] [--history 512 2000] [--candidates 128 512] [--threads 1]

Prints markdown tables (median ms; the two graphs run in turn within every round, so a drifting machine slows
both alike) with the machine and versions. "as exported" is the graph without the pass, which ONNX Runtime
fuses into SkipLayerNormalization; "on rows" is what the build serves.
"""

import argparse

import numpy as np
import onnx
from onnx import helper
from precision_latency import interleaved_ms  # this script's directory is on sys.path

from compiler.core.machine import machine, versions
from compiler.load.subject import Source, StcaSubject
from compiler.passes.layer_norm_rows import layer_norms_on_rows
from compiler.runtime.ort import OrtGraph
from compiler.stca.checkpoint import seeded_model
from compiler.stca.data import sample_requests
from compiler.stca.model import preset


def one_norm(shape: tuple[int, ...]) -> onnx.ModelProto:
    """y = LayerNormalization(a + b) over the last axis: the pattern ONNX Runtime fuses on a 3-D sum."""
    values = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in ("a", "b", "y")]
    D = shape[-1]
    weights = [helper.make_tensor("scale", onnx.TensorProto.FLOAT, [D], np.ones(D, np.float32)),
               helper.make_tensor("bias", onnx.TensorProto.FLOAT, [D], np.zeros(D, np.float32))]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "scale", "bias"], ["y"], axis=-1)]
    return helper.make_model(helper.make_graph(nodes, "one_norm", values[:2], values[2:], weights),
                             opset_imports=[helper.make_opsetid("", 18)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="medium")
    p.add_argument("--history", type=int, nargs="+", default=[512, 2_000])
    p.add_argument("--candidates", type=int, nargs="+", default=[128, 512])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    v, m = versions(), machine()
    print(f"{m.describe()}; onnxruntime {v['onnxruntime']}, "
          f"{args.threads} intra-op threads, median of {args.rounds} interleaved rounds\n")

    model = seeded_model(preset(args.preset))
    T, D = model.config.n_tokens, model.config.d_model
    print("One residual norm, x + skip then LayerNormalization over D:\n")
    print("| shape | as exported ms | on rows ms | saved |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for N in args.candidates:
        shape = (N, T, D)
        exported = one_norm(shape)
        graphs = {"exported": OrtGraph(exported, args.threads), "rows": OrtGraph(layer_norms_on_rows(exported)[0], args.threads)}
        feeds = {name: rng.normal(size=shape).astype(np.float32) for name in ("a", "b")}
        ms = interleaved_ms({label: lambda g=g: g.run(feeds) for label, g in graphs.items()}, 10 * args.rounds)
        print(f"| {shape} | {ms['exported']:.3f} | {ms['rows']:.3f} | {1 - ms['rows'] / ms['exported']:.0%} |")

    exported = StcaSubject(model, Source("seeded")).export(18)
    on_rows, count = layer_norms_on_rows(exported)
    graphs = {"exported": OrtGraph(exported, args.threads), "rows": OrtGraph(on_rows, args.threads)}
    print(f"\nThe whole {args.preset} STCA graph, fp32 ({count} norms moved to rows):\n")
    print("| L | N | as exported ms | on rows ms | saved |")
    print("|---:|---:|---:|---:|---:|")
    for L in args.history:
        for N in args.candidates:
            request = next(sample_requests(model.config, [L], seed=0, n_candidates=N)).inputs
            ms = interleaved_ms({label: lambda g=g: g.run(request) for label, g in graphs.items()}, args.rounds)
            print(f"| {L} | {N} | {ms['exported']:.1f} | {ms['rows']:.1f} | {1 - ms['rows'] / ms['exported']:.0%} |")


if __name__ == "__main__":
    main()
