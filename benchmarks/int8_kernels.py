"""ONNX Runtime's CPU GEMM kernels on one shape, fp32 against int8: the ceiling int8 can reach on this machine.

    .venv/bin/python benchmarks/int8_kernels.py [--shape 10000 256 512] [--threads 1 2]

One weight GEMM of the encoder's shape (M = history items, K x N the weight), three ways: fp32 MatMul, the
cpu int8 form's Q/DQ pattern (uint8 activation, per-channel int8 weight) that ONNX Runtime fuses into its
integer kernel, and the bare uint8 x int8 MatMulInteger. Prints best-of-10 ms and GOP/s per thread count with
the machine and versions: whatever else a graph does, its int8 GEMMs gain at most the ratio printed here.
"""

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compiler.core.machine import machine, versions


def session(nodes, inputs, output_type: int, initializers, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "gemm", inputs, [helper.make_tensor_value_info("y", output_type, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def best_seconds(s: ort.InferenceSession, feeds: dict, runs: int = 10) -> float:
    s.run(None, feeds)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        s.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[10_000, 256, 512], metavar=("M", "K", "N"))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    M, K, N = args.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_int8 = np.round(w / w_scale).astype(np.int8)
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])
    weight = [numpy_helper.from_array(w_int8, "w")]
    qdq = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
           helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
           helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=1),
           helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    qdq_initializers = weight + [numpy_helper.from_array(np.float32(np.abs(x).max() / 127), "x_scale"),
                                 numpy_helper.from_array(np.uint8(128), "x_zero"), numpy_helper.from_array(w_scale, "w_scale"),
                                 numpy_helper.from_array(np.zeros(N, np.int8), "w_zero")]
    forms = {
        "fp32 MatMul": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [x_in], TensorProto.FLOAT,
                        [numpy_helper.from_array(w, "w")], {"x": x}),
        "int8 Q/DQ MatMul (fused by ORT)": (qdq, [x_in], TensorProto.FLOAT, qdq_initializers, {"x": x}),
        "uint8 x int8 MatMulInteger": ([helper.make_node("MatMulInteger", ["x", "w", "x_zero"], ["y"])],
                                       [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])], TensorProto.INT32,
                                       weight + [numpy_helper.from_array(np.uint8(128), "x_zero")],
                                       {"x": rng.integers(0, 256, (M, K), dtype=np.uint8)}),
    }
    m, v = machine(), versions()
    print(f"{m.describe()}; onnxruntime {v['onnxruntime']}; "
          f"GEMM {M} x {K} x {N}, best of 10\n")
    print("| kernel | threads | ms | GOP/s | vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for threads in args.threads:
        fp32 = None
        for name, (nodes, inputs, output_type, initializers, feeds) in forms.items():
            seconds = best_seconds(session(nodes, inputs, output_type, initializers, threads), feeds)
            fp32 = fp32 or seconds
            print(f"| {name} | {threads} | {1e3 * seconds:.1f} | {2 * M * K * N / seconds / 1e9:.0f} | {fp32 / seconds:.2f}x |")


if __name__ == "__main__":
    main()
