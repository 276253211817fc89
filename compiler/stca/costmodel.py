"""Cost model: FLOPs and bytes per request of STCA, per half and per attention form, from the config alone.

FLOPs count multiply-adds of the matrix products as 2 (elementwise work, LayerNorm, softmax are ignored:
they are O(L*D) against the GEMMs' O(L*D^2)). For one request with L history items and N candidates,
D = h*d_h, hidden H = swiglu_mult*D, M layers, T = 1 + K + F RankMixer tokens:

  encoder (per request)
    SwiGLU_i(X), i=1..M:            M * 3 * 2*L*D*H
    kv form only: K_i, V_i:         M * 2 * 2*L*D*D
  scorer (per candidate, times N)
    queries q_1..q_M, projected:    sum_{i=1..M} 2*(2*D*H + H*D) + sum_{i=2..M} 2*i*D*D   (W_C: i*D -> D)
    queries q_1..q_M, direct:       sum_{i=1..M} 2*(2*i*D*H + H*D)   (q_i's SwiGLU reads [o_1..o_{i-1}, x_t])
    attention, kv form:             M * (2*L*D [q K^T] + 2*L*D [alpha V] + 2*D*D [W_Q] + 2*D*D [W_O])
    attention, reordered form:      M * (2*D*D [W_Q] + 2*D*D [u = q W_K^T] + 2*h*D*L [u Xt^T] + 2*h*L*D [alpha Xt]
                                         + 2*D*D [(alpha Xt) W_V] + 2*D*D [W_O])
    z, projected:                   2*(M+1)*D*D [W_Z] + 2*(2*D*H + H*D)
    z, direct:                      2*(2*(M+1)*D*H + H*D)
    RankMixer:                      mixer_layers * T * 2 * 2*D*H
    heads:                          2*D*tasks
  The kv form moves 4*L*D^2 per layer into the encoder and saves 2*(h-1)*L*D per candidate and layer, so it
  is cheaper once N > D / (h - 1 + D/L) (about D/(h-1): 68 for the paper preset, 21 for the demo model).

Bytes per request: the cut (what crosses from encoder to scorer, in the cut's dtype).

With the history row cache (compiler.runtime.row_cache) every encoder output row is a function of its own history
item, so the encoder's FLOPs above are paid only for the rows the cache misses: `new_rows`, the fraction of the L rows
computed, scales them (1: unique traffic; 0: a returning user whose every row is cached). The scorer's stay. A cached
row holds the cut's per-item tensors: K_i and V_i of every layer (kv) or Xt_i (reordered), D values each in the cut's
dtype, and the key bias (fp32): row_bytes. So the kv form's extra encoder work, what makes reordered cheaper at small
N, vanishes as the hit rate rises (kv is cheaper at every N once every row is cached), while its rows stay twice the
bytes: half the users fit a budget.

Picking the attention form for a target also prices the cut: where it crosses process boundaries (the
python target: out of the encoder's Python-backend stub, through the server, into the scorer's), each
byte costs about as much time as CUT_BYTE_FLOPS[target] FLOPs of GEMM. The kv form ships twice the
reordered form's bytes (K_i and V_i against Xt_i), so this moves the crossover up on that target.
tests/stca/test_costmodel.py checks the FLOPs against PyTorch's own FlopCounterMode on the model's forward.
"""

from dataclasses import dataclass

from compiler.stca.model import STCAConfig

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# FLOP-equivalents of one byte crossing the cut. python: in the recorded benchmark (demo model, fp32, 2 cores,
# GEMM peak 181 GFLOP/s, benchmarks/results/demo-cpu), one request at L=10,000, N=32 spent 9.9 ms more in the
# two stubs and the server's copies than the same graphs take in one process (encoder 40.9 ms infer + 3.1 ms
# output against 37.6 ms; scorer 1.9 ms input + 13.5 ms infer against 12.0 ms), 1.1 ms of it fixed (the same
# difference at L=512): 8.8 ms for 19.5 MB more cut, 0.45 ns/byte, ~80 FLOPs. In one process (the onnxruntime
# backend's ensemble on a CPU, TensorRT on a GPU) the scorer reads the encoder's buffer: no copy to price.
CUT_BYTE_FLOPS = {"python": 80.0, "onnxruntime": 0.0, "tensorrt": 0.0, "in-process": 0.0}


@dataclass(frozen=True)
class Cost:
    encoder_flops: float
    scorer_flops: float  # for all N candidates
    cut_bytes: float  # what crosses from the encoder to the scorer per request

    @property
    def flops(self) -> float:
        return self.encoder_flops + self.scorer_flops


def split_cost(c: STCAConfig, L: int, N: int, attention: str | None = None, cut_precision: str = "fp32",
               new_rows: float = 1.0) -> Cost:
    """One request through the split ensemble (the fused graph does the same work without the cut). The
    cut's float tensors cross in `cut_precision`, but for the key bias (padding's -1e9 stays fp32). new_rows: the
    fraction of the L history rows the encoder computes, the rest served by the history row cache."""
    form = attention or c.attention
    D, H, M, h = c.d_model, c.swiglu_mult * c.d_model, c.n_layers, c.n_heads
    swiglu = lambda d_in: 2 * (2 * d_in * H + H * D)  # noqa: E731  (per token: W_1 and W_3 from d_in, W_2 back to D)
    encoder = M * L * swiglu(D)
    if form == "kv":
        encoder += M * 2 * 2 * L * D * D
        attention_per_candidate = 2 * L * D + 2 * L * D + 2 * 2 * D * D
    else:
        attention_per_candidate = 4 * 2 * D * D + 2 * h * D * L + 2 * h * L * D
    if c.fusion == "projected":  # W_C / W_Z project the concatenation to D; q_1 reads x_t, already D wide
        queries = M * swiglu(D) + sum(2 * i * D * D for i in range(2, M + 1))
        z = 2 * (M + 1) * D * D + swiglu(D)
    else:
        queries = sum(swiglu(i * D) for i in range(1, M + 1))
        z = swiglu((M + 1) * D)
    mixer = c.mixer_layers * c.n_tokens * 2 * 2 * D * H
    heads = 2 * D * len(c.tasks)
    scorer = N * (queries + M * attention_per_candidate + z + mixer + heads)
    cut_width = BYTES[cut_precision]
    per_layer_cut = (2 if form == "kv" else 1) * L * D * cut_width
    cut = M * per_layer_cut + L * 4 + c.n_user_fields * D * cut_width
    return Cost(float(new_rows * encoder), float(scorer), float(cut))


def row_bytes(c: STCAConfig, attention: str | None = None, cut_precision: str = "fp32") -> int:
    """Bytes the history row cache keeps per history item: each layer's K_i and V_i rows (kv) or Xt_i row (reordered)
    in the cut's dtype, and the key bias in fp32."""
    per_layer = (2 if (attention or c.attention) == "kv" else 1) * c.d_model * BYTES[cut_precision]
    return c.n_layers * per_layer + 4


def naive_cost(c: STCAConfig, L: int, N: int, attention: str | None = None) -> Cost:
    """The point-wise baseline: N separate one-candidate requests, each encoding the whole history."""
    one = split_cost(c, L, 1, attention)
    return Cost(N * one.encoder_flops, N * one.scorer_flops, N * one.cut_bytes)


def served_cost(c: STCAConfig, L: int, N: int, attention: str, target: str = "in-process", cut_precision: str = "fp32",
                new_rows: float = 1.0) -> float:
    """FLOPs plus the cut's bytes priced for the target (CUT_BYTE_FLOPS): what the attention pick minimises."""
    cost = split_cost(c, L, N, attention, cut_precision=cut_precision, new_rows=new_rows)
    return cost.flops + CUT_BYTE_FLOPS[target] * cost.cut_bytes


def best_attention(c: STCAConfig, L: int, N: int, target: str = "in-process", cut_precision: str = "fp32",
                   new_rows: float = 1.0) -> str:
    """The attention form that costs less for requests of L history items and N candidates on `target`, the encoder
    computing `new_rows` of the rows (1 - the history row cache's hit rate)."""
    return min(("kv", "reordered"), key=lambda form: served_cost(c, L, N, form, target, cut_precision, new_rows))


def crossover_candidates(c: STCAConfig, L: int, target: str = "in-process", cut_precision: str = "fp32",
                         new_rows: float = 1.0) -> float:
    """N above which the kv form is cheaper: (new_rows * D + b) / (h - 1 + D/L), where b = CUT_BYTE_FLOPS * width / 4
    prices the extra L*D values per layer the kv form ships (b = 0 in one process: D / (h - 1 + D/L) on unique
    traffic, 0 once every row is cached)."""
    b = CUT_BYTE_FLOPS[target] * BYTES[cut_precision] / 4
    return (new_rows * c.d_model + b) / (c.n_heads - 1 + c.d_model / L)


def gemm_peaks(size: int = 2_048, seconds: float = 1.0) -> dict[str, float]:
    """Best fp32 FLOP/s of a size x size matmul in this process, per library: ONNX Runtime (the kernels the served
    graphs run, the weight an initializer it prepacks, as a served model's are) and PyTorch (the eager baseline's).
    Each repeats for `seconds`: a few runs on a shared VM gave anywhere from 90 to 177 GFLOP/s."""
    import time

    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    a, b = torch.randn(size, size), torch.randn(size, size)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], [numpy_helper.from_array(b.numpy(), "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as PyTorch's
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    feeds = {"a": np.ascontiguousarray(a.numpy())}
    runs = {"onnxruntime": lambda: session.run(None, feeds), "torch": lambda: torch.matmul(a, b)}
    peaks = {}
    for library, run in runs.items():
        run()  # warm-up
        best, until = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < until:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        peaks[library] = 2 * size**3 / best
    return peaks


def peaks_text(peaks: dict[str, float]) -> str:
    """gemm_peaks' answer as the results say it: "onnxruntime 171, torch 174" (GFLOP/s)."""
    return ", ".join(f"{library} {flops / 1e9:.0f}" for library, flops in peaks.items())
