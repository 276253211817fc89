"""TensorRT-compatibility lint: checks, on the CPU, what TensorRT's ONNX parser would refuse on the GPU host.

Runs in every build, on every graph the repository will hold, and fails the build with the node and the
rule it breaks. A graph served by ONNX Runtime on the CPU may hold the contrib kernels a build chose for it
(`onnxruntime_ops`: compiler.passes.fused_attention's MultiHeadAttention): they are counted, not refused, and a
tensorrt build never makes them. The operator list follows the onnx-tensorrt support matrix (docs/operators.md) for
TensorRT 10.15; the rules are the restrictions that matrix and TensorRT's quantization guide state.
"""

from dataclasses import dataclass

import numpy as np
import onnx

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import GraphIndex

OPSETS = range(17, 21)  # opset >= 23 turns attention into one Attention op that TensorRT's parser may not take
# Operators the TensorRT ONNX parser supports ("Y" in the onnx-tensorrt support matrix as published for TensorRT
# 10.15, the newest this list was checked against; the engines stage builds with TensorRT 10 or 11).
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())
CONSTANT_AXES_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                     "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class LintReport:
    graph: str
    nodes: int
    qdq_pairs: int
    problems: tuple[str, ...]
    onnxruntime_nodes: int = 0  # contrib-op nodes allowed because ONNX Runtime serves the graph

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"graph": self.graph, "nodes": self.nodes, "qdq_pairs": self.qdq_pairs, "ok": self.ok, "problems": list(self.problems),
                "onnxruntime_nodes": self.onnxruntime_nodes}

    @classmethod
    def from_dict(cls, d: dict) -> "LintReport":
        return cls(d["graph"], d["nodes"], d["qdq_pairs"], tuple(d["problems"]), d.get("onnxruntime_nodes", 0))


def lint(model: onnx.ModelProto, name: str, tensorrt_qdq: bool = True, onnxruntime_ops: frozenset = frozenset()) -> LintReport:
    """tensorrt_qdq: check Q/DQ nodes against TensorRT's int8 rules (off for the cpu int8 form, whose uint8
    activations and zero points are what ONNX Runtime's kernels want and which no TensorRT engine reads).
    onnxruntime_ops: (domain, op type) pairs the graph may hold because ONNX Runtime serves it."""
    graph = model.graph
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset not in OPSETS:
        problems.append(f"opset {opset} is outside {OPSETS.start}..{OPSETS.stop - 1}")
    index = GraphIndex(graph)
    onnxruntime_nodes = 0
    for node in graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if (node.domain, node.op_type) in onnxruntime_ops:
            onnxruntime_nodes += 1
        elif node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: TensorRT's ONNX parser does not support {node.op_type}")
        if node.op_type in CONSTANT_AXES_OPS and len(node.input) > 1 and node.input[1] and not index.is_constant(node.input[1]):
            problems.append(f"{where}: axes input {node.input[1]!r} must be a constant for TensorRT")
        if tensorrt_qdq and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _qdq_problems(node, where, index)
    qdq = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    return LintReport(name, len(graph.node), qdq, tuple(problems), onnxruntime_nodes)


def check(models: dict[str, onnx.ModelProto], tensorrt_qdq: bool = True, onnxruntime_ops: frozenset = frozenset()) -> list[LintReport]:
    """Lint every graph; raise a CompilerError listing the first problems if any graph has one."""
    reports = [lint(model, name, tensorrt_qdq, onnxruntime_ops) for name, model in models.items()]
    bad = [f"{r.graph}: {p}" for r in reports for p in r.problems]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CompilerError(f"TensorRT lint: {len(bad)} problem(s): " + "; ".join(bad[:5]) + more)
    return reports


def _qdq_problems(node, where, index: GraphIndex) -> list[str]:
    problems = []
    scale = index.constant(node.input[1]) if len(node.input) > 1 else None
    has_zero_point = len(node.input) > 2 and node.input[2]
    zero_point = index.constant(node.input[2]) if has_zero_point else None
    quantized = node.input[0] if node.op_type == "DequantizeLinear" else node.output[0]
    qtype = index.elem_type(node.input[2]) if has_zero_point else index.elem_type(quantized)
    if node.op_type == "DequantizeLinear" and index.elem_type(node.input[0]) == onnx.TensorProto.INT32:
        problems.append(f"{where}: int32 DequantizeLinear (TensorRT dequantizes int8, not int32 biases)")
    elif qtype is not None and qtype != onnx.TensorProto.INT8:
        problems.append(f"{where}: quantized type {onnx.TensorProto.DataType.Name(qtype)} is not INT8")
    if zero_point is not None and np.any(zero_point != 0):
        problems.append(f"{where}: zero point is not 0 (TensorRT quantization is symmetric)")
    if scale is not None and scale.size > 1:
        if not any(a.name == "axis" for a in node.attribute):
            problems.append(f"{where}: per-channel scale without an explicit axis")
    return problems


def summary(reports: list[LintReport]) -> str:
    return ", ".join(f"{r.graph} {r.nodes} nodes" + (f" ({r.qdq_pairs} Q/DQ)" if r.qdq_pairs else "")
                     + (f" ({r.onnxruntime_nodes} ONNX Runtime only)" if r.onnxruntime_nodes else "") for r in reports)

