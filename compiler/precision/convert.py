"""Precision stage: the fp32 halves -> the halves in the precision each is served at.

TensorRT 11 is strongly typed, so precision is decided here, in the ONNX graphs, and the very graphs
that verify runs on ONNX Runtime are the ones the engines are built from.

  fp32  as exported.
  fp16  ModelOpt AutoCast (NVIDIA's TensorRT-oriented converter: it inserts the casts, keeps the graph's
        I/O dtypes and sanitizes for TensorRT) with four things kept in fp32: LayerNormalization and
        Softmax by op type; every reduction over the history length L, found here from the symbolic dim
        L (the alpha @ V matmul, any ReduceSum/Mean over L): summing 10,000 fp16 terms loses digits a
        ranking needs; and everything that feeds a discontinuous op (Floor, Round, a comparison, a cast
        to int), such as the age bucket floor(log2(1 + age)): an fp16 rounding error there moves a value
        across a bucket boundary (an age of 511.7 s landed in bucket 8 instead of 9 and changed every
        K and V of that request). AutoCast's data-range rule would need a reference run; data_max=inf
        turns it off.
  int8  in the form the target's integer kernels run (INT8_FORMS), calibrated on requests at serving
        lengths (a calibration set, see compiler.precision.calibrate); the scorer on what the served encoder hands it.
        Activation x activation matmuls (the attention bmms QK^T and alpha V) stay in float in both forms:
        their scale would have to hold for every L from 1 to 10,000.
          tensorrt  ModelOpt ONNX PTQ: symmetric int8 Q/DQ on activations and per-channel weights, entropy
                    calibration: what TensorRT's int8 kernels take.
          cpu       ONNX Runtime's quantizer: uint8 asymmetric activations, int8 symmetric per-channel weights,
                    MinMax calibration, only MatMul/Gemm inputs quantized (their outputs stay float). ONNX
                    Runtime's x86 kernels are fast for u8 x s8 (VNNI, AMX) and fall back to generic code for
                    s8 x s8 without AVX-VNNI-INT8, so the tensorrt form runs slower than fp32 on most CPUs.
                    Given a `ranges` directory, each float graph's calibrated ranges on its feeds are kept there
                    (ONNX Runtime's calibration cache) and read back when the same graph is converted on the same
                    feeds again with other layers kept in float: the int8 fallback converts a half once per layer,
                    and the calibration run was most of each conversion.
"""

import contextlib
import hashlib
import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.core.machine import machine  # build imports this module
from compiler.core.names import ENCODER, FUSED, SCORER, SHORT_NAMES
from compiler.core.precisions import PRECISIONS
from compiler.passes.graph_index import GraphIndex
from compiler.passes.partition import Split
from compiler.runtime.ort import OrtGraph, with_cut

FP32_OP_TYPES = ("LayerNormalization", "Softmax")
DISCONTINUOUS_OPS = ("Floor", "Ceil", "Round", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Sign")
INT8_FORMS = ("tensorrt", "cpu")
REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceSumSquare", "Softmax", "LogSoftmax")


@dataclass(frozen=True)
class PrecisionConfig:
    precision: str = "fp32"  # both halves, unless overridden below
    encoder: str | None = None
    scorer: str | None = None
    calibration: Path | None = None  # int8: a calibration set (python -m compiler calibrate); None makes one
    calibration_method: str = "entropy"  # or "max"; the tensorrt int8 form's (the cpu form calibrates MinMax)
    int8_high_precision: str = "fp32"  # dtype of what int8 leaves unquantized: fp32 (CPU, accuracy) or fp16 (GPU speed)
    length_dim: str = "L"  # the symbolic dim whose reductions stay in fp32
    cut: str | None = None  # dtype the cut crosses in (compiler.passes.cut_dtype): "fp32" | "fp16"; None: fp16 unless both halves are fp32

    int8_form: str | None = None  # INT8_FORMS; None: the one the served target runs (compiler.build)

    def __post_init__(self):
        if self.int8_form not in (None, *INT8_FORMS):
            raise CompilerError(f"int8 form: {self.int8_form!r} is not one of {INT8_FORMS}")
        for name, value in (("precision", self.precision), ("encoder precision", self.encoder), ("scorer precision", self.scorer)):
            if value is not None and value not in PRECISIONS:
                raise CompilerError(f"{name}: {value!r} is not one of {PRECISIONS}")
        if self.calibration_method not in ("entropy", "max"):
            raise CompilerError(f"calibration method: {self.calibration_method!r} is not entropy or max")
        if self.int8_high_precision not in ("fp32", "fp16"):
            raise CompilerError(f"int8 high precision: {self.int8_high_precision!r} is not fp32 or fp16")
        if self.cut not in (None, "fp32", "fp16"):
            raise CompilerError(f"cut dtype: {self.cut!r} is not fp32 or fp16")

    def cut_precision(self, bytes_cost: bool = True) -> str:
        """The dtype the cut crosses in: --cut-dtype where given; fp32 when both halves are fp32 (an fp32 build ships
        fp16 only when asked); otherwise fp16 where the cut's bytes cost time (`bytes_cost`: copied between two
        processes, or read from GPU memory), and where they do not (one CPU process hands the scorer the encoder's
        buffer) the dtype the scorer computes in: narrowing there buys only two casts and a rounding (medium model,
        int8, L=10,000: the casts were 3% of the split's time, docs/precision.md)."""
        if self.cut:
            return self.cut
        if self.encoder_precision == self.scorer_precision == "fp32":
            return "fp32"
        return "fp16" if bytes_cost else self.scorer_compute_precision

    @property
    def scorer_compute_precision(self) -> str:
        """The float dtype the scorer computes in: int8 leaves what it does not quantize in int8_high_precision."""
        return self.int8_high_precision if self.scorer_precision == "int8" else self.scorer_precision

    @property
    def encoder_precision(self) -> str:
        return self.encoder or self.precision

    @property
    def scorer_precision(self) -> str:
        return self.scorer or self.precision


@dataclass(frozen=True)
class Halves:
    """The split as served: both halves in their precisions (and the cut in the dtypes it crosses in)."""

    split: Split
    encoder_precision: str
    scorer_precision: str
    details: dict = field(default_factory=dict)  # what each conversion did, for the manifest
    whole: onnx.ModelProto | None = None  # the unsplit graph at --precision, when the baselines are built

    def graphs(self) -> dict[str, onnx.ModelProto]:
        graphs = {ENCODER: self.split.encoder, SCORER: self.split.scorer, **({FUSED: self.whole} if self.whole is not None else {})}
        return {SHORT_NAMES[name]: graph for name, graph in graphs.items()}


def convert(parts: Split, cfg: PrecisionConfig, calibration=None, whole: onnx.ModelProto | None = None,
            int8_form: str = "tensorrt", keep_float: Mapping[str, Iterable[str]] = {}, ranges: Path | None = None) -> Halves:
    """`calibration` (a compiler.precision.calibrate.CalibrationSet) is needed when a graph is int8, made in `int8_form`
    (cfg.int8_form wins where given); `whole`, the unsplit graph, is converted at the base precision for the
    stca_fused baseline. keep_float: per half ("encoder", "scorer", "fused"), weight GEMMs int8 leaves alone.
    ranges: a directory where the cpu int8 form keeps calibrated ranges between calls (the module docstring)."""
    cfg = replace(cfg, int8_form=cfg.int8_form or int8_form)
    if "int8" in (cfg.encoder_precision, cfg.scorer_precision, cfg.precision if whole is not None else None) and calibration is None:
        raise CompilerError("precision int8: no calibration set given")
    details = {}
    keep = {half: tuple(nodes) for half, nodes in keep_float.items()}
    e, sc, f = (SHORT_NAMES[m] for m in (ENCODER, SCORER, FUSED))
    requests = calibration.sha256.encode() if calibration is not None else b""
    encoder, details[e] = _convert(parts.encoder, cfg.encoder_precision, cfg, partial(_request_feeds, parts.encoder, calibration),
                                   keep.get(e, ()), _ranges_file(ranges, parts.encoder, requests))
    scorer, details[sc] = _convert(parts.scorer, cfg.scorer_precision, cfg, partial(_scorer_feeds, encoder, parts.scorer, calibration),
                                   keep.get(sc, ()), _ranges_file(ranges, parts.scorer, requests, encoder))
    if whole is not None:
        whole, details[f] = _convert(whole, cfg.precision, cfg, partial(_request_feeds, whole, calibration), keep.get(f, ()),
                                     _ranges_file(ranges, whole, requests))
    if calibration is not None:
        details["calibration"] = {"path": str(calibration.path), "count": calibration.count, "sha256": calibration.sha256,
                                  "lengths": {"min": min(calibration.lengths), "median": int(np.median(calibration.lengths)),
                                              "max": max(calibration.lengths)}, "method": cfg.calibration_method}
    return Halves(Split(encoder, scorer, parts.cut), cfg.encoder_precision, cfg.scorer_precision, details, whole)


def _ranges_file(ranges: Path | None, graph: onnx.ModelProto, requests: bytes, served_encoder: onnx.ModelProto | None = None) -> Path | None:
    """Where `graph`'s calibrated ranges are kept: one file per float graph and feeds (the calibration requests, and for
    the scorer the encoder that makes its cut), since those alone decide the ranges."""
    if ranges is None:
        return None
    digest = hashlib.sha256(graph.SerializeToString())
    digest.update(requests)
    if served_encoder is not None:
        digest.update(served_encoder.SerializeToString())
    return Path(ranges) / f"{digest.hexdigest()[:32]}.json"


def _convert(half: onnx.ModelProto, precision: str, cfg: PrecisionConfig, feeds, keep_float: tuple[str, ...] = (),
             ranges: Path | None = None):
    if precision == "fp32":
        return half, {"precision": "fp32"}
    if precision == "fp16":
        return to_fp16(half, cfg.length_dim)
    unknown = sorted(set(keep_float) - set(weight_matmuls(half)))
    if unknown:
        raise CompilerError(f"precision int8: {unknown[:3]} are not weight MatMul/Gemm nodes of this graph; nothing else is quantized")
    if cfg.int8_form == "cpu":
        quantized, details = to_int8_cpu(half, feeds, cfg, keep_float, ranges)
    else:
        quantized, details = to_int8(half, feeds, cfg, keep_float)
    if cfg.int8_high_precision == "fp16":
        quantized, details["fp16"] = to_fp16(quantized, cfg.length_dim)
    return quantized, details


def length_reductions(model: onnx.ModelProto, dim: str = "L") -> dict[str, str]:
    """Nodes that sum, average or normalise over the symbolic dim `dim`: node name -> why."""
    index = GraphIndex(model.graph)
    found = {}
    for node in model.graph.node:
        shape = index.shape(node.input[0]) if node.input else None
        if not shape:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            contracted = shape[-2] if trans_a and len(shape) >= 2 else shape[-1]
            if contracted == dim:
                found[node.name] = f"{node.op_type} contracts over {dim}"
        elif node.op_type in REDUCE_OPS:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type in ("Softmax", "LogSoftmax"):
                axes = [attrs.get("axis", -1)]
            elif len(node.input) > 1 and index.constant(node.input[1]) is not None:
                axes = list(index.constant(node.input[1]).reshape(-1))
            else:
                axes = attrs.get("axes", range(len(shape)))  # no axes: a reduction over everything
            if any(shape[int(a)] == dim for a in axes):
                found[node.name] = f"{node.op_type} over {dim}"
    return found


def discretization_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Float nodes upstream of a discontinuous op (a bucketing, a threshold): node name -> why."""
    producer = GraphIndex(model.graph).producer
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    int_casts = [n for n in model.graph.node if n.op_type == "Cast" and
                 any(a.name == "to" and a.i not in float_types | {onnx.TensorProto.BOOL} for a in n.attribute)]
    found, pending = {}, []
    for node in [n for n in model.graph.node if n.op_type in DISCONTINUOUS_OPS] + int_casts:
        pending += [(i, f"feeds {node.op_type} {node.name}") for i in node.input]
    while pending:
        name, why = pending.pop()
        node = producer.get(name)
        if node is None or node.name in found or node.op_type in ("Shape", "Size", "Constant"):
            continue
        found[node.name] = why
        pending += [(i, why) for i in node.input]
    return found


def to_fp16(half: onnx.ModelProto, length_dim: str = "L") -> tuple[onnx.ModelProto, dict]:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    reductions, discretizing = length_reductions(half, length_dim), discretization_inputs(half)
    keep = {**reductions, **discretizing}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / "half.onnx"
        onnx.save(half, str(path))
        converted = convert_to_mixed_precision(
            str(path),
            "fp16",
            op_types_to_exclude=list(FP32_OP_TYPES),
            nodes_to_exclude=[f"^{re.escape(name)}$" for name in keep],
            data_max=np.inf,  # no reference run: what stays fp32 is decided by the rules above
            keep_io_types=True,
        )
    counts = _node_precisions(converted)
    return converted, {"precision": "fp16", "tool": "modelopt.onnx.autocast", "nodes": counts,
                       "kept_fp32": {"op_types": list(FP32_OP_TYPES), "length_reductions": reductions,
                                     "feeding_discontinuous_ops": discretizing}}


def to_int8(half: onnx.ModelProto, feeds, cfg: PrecisionConfig, keep_float: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict]:
    from modelopt.onnx.quantization import quantize

    bmms = attention_matmuls(half)
    with tempfile.TemporaryDirectory() as tmp, _quiet(), _ort_quantization_kept():
        source, target = Path(tmp) / "half.onnx", Path(tmp) / "half.int8.onnx"
        onnx.save(half, str(source))
        quantize(
            str(source),
            quantize_mode="int8",
            calibration_data_reader=_Reader(feeds),
            calibration_method=cfg.calibration_method,
            calibration_eps=["cpu"],
            nodes_to_exclude=[f"^{re.escape(name)}$" for name in (*bmms, *keep_float)],
            high_precision_dtype="fp32",  # fp16 goes through to_fp16 below, so its fp32 rules apply
            output_path=str(target),
            log_level="ERROR",
        )
        quantized = onnx.load(str(target))
    q = Counter(n.op_type for n in quantized.graph.node)
    index = GraphIndex(quantized.graph)
    quantized_ops = Counter(_consumer_op(index, n) for n in quantized.graph.node if n.op_type == "DequantizeLinear")
    details = {"precision": "int8", "form": "tensorrt", "tool": "modelopt.onnx.quantization", "qdq_pairs": q["QuantizeLinear"],
               "quantized_inputs_by_op": dict(quantized_ops), "attention_bmms_kept": bmms, "kept_float": list(keep_float),
               "high_precision": cfg.int8_high_precision, "calibration_method": cfg.calibration_method}
    return quantized, details


def to_int8_cpu(half: onnx.ModelProto, feeds, cfg: PrecisionConfig, keep_float: tuple[str, ...] = (),
                ranges: Path | None = None) -> tuple[onnx.ModelProto, dict]:
    """The cpu int8 form (module docstring): every MatMul/Gemm with a weight, in the Q/DQ pattern ONNX Runtime
    fuses into its integer kernels (QGemm, MatMulIntegerToFloat); `ranges`, a file for the calibrated ranges: read
    where it exists, written where not."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    bmms = attention_matmuls(half)
    seven_bit = not int8_dot_products()
    # A batched weight (one matrix per RankMixer token) takes one scale: MatMulIntegerToFloat reads per-column
    # zero points only for a 2-D weight.
    per_tensor = {init.name: [{"symmetric": True}] for init in half.graph.initializer if len(init.dims) > 2}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, target = Path(tmp) / "half.onnx", Path(tmp) / "half.int8.onnx"
        onnx.save(half, str(source))  # a ModelProto given to quantize_static is moved to external data in place
        quantize_static(source, target, _Reader(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                        per_channel=True, reduce_range=seven_bit, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[*bmms, *keep_float],
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=ranges,
                        # outputs stay float: a quantized output would put a Q/DQ pair in front of the float bmms
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                                       "TensorQuantOverrides": per_tensor})
        quantized = onnx.load(str(target))
    index = GraphIndex(quantized.graph)
    quantized_ops = Counter(_consumer_op(index, n) for n in quantized.graph.node if n.op_type == "DequantizeLinear")
    details = {"precision": "int8", "form": "cpu", "tool": "onnxruntime.quantization",
               "qdq_pairs": sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear"),
               "quantized_inputs_by_op": dict(quantized_ops), "attention_bmms_kept": bmms, "kept_float": list(keep_float),
               "high_precision": cfg.int8_high_precision, "calibration_method": "minmax",
               "weight_bits": 7 if seven_bit else 8}
    return quantized, details


def int8_dot_products() -> bool:
    """Whether this CPU has an int8 dot-product instruction (VNNI, AMX). Without one, ONNX Runtime's uint8 x int8
    kernels multiply with vpmaddubsw, which adds two u8 x s8 products into a saturating int16 (255 x 127 x 2
    overflows it), so the cpu form quantizes weights to 7 bits there, ONNX Runtime's remedy (reduce_range).
    Measured on an AVX2-only host: the seed-1 demo model at 8-bit weights missed its int8 gates with 8 layers kept
    in float (L=7 N=256, tau 0.9499); on an AVX-512 VNNI host it passed with 2 kept. The repository is built for
    the CPU it is built on, as its thread budget is."""

    return any(flag in machine().isa for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls and Gemms with a weight operand: what int8 quantizes, in graph order."""
    index = GraphIndex(model.graph)
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(index.is_weight(i) for i in n.input)]


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose two inputs are both activations (QK^T, alpha V), not activation x weight."""
    index = GraphIndex(model.graph)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(index.is_weight(i) for i in n.input)]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a lazily built feed iterator (one request in memory)."""

    def __init__(self, make_feeds):
        self.make_feeds = make_feeds
        self.rewind()

    def get_next(self):
        return next(self.iterator, None)

    def get_first(self):
        return next(iter(self.make_feeds()))

    def rewind(self):
        self.iterator = iter(self.make_feeds())


def _request_feeds(graph: onnx.ModelProto, calibration):
    """The calibration requests, each cut down to the inputs `graph` reads."""
    names = [i.name for i in graph.graph.input]
    return ({name: request[name] for name in names} for request in calibration.requests())


def _scorer_feeds(served_encoder: onnx.ModelProto, scorer: onnx.ModelProto, calibration):
    """The calibration requests as the scorer sees them: with the served encoder's cut."""
    encoder, names = OrtGraph(served_encoder), [i.name for i in scorer.graph.input]
    return ({name: values[name] for name in names} for values in (with_cut(encoder, r) for r in calibration.requests()))


def _node_precisions(model: onnx.ModelProto) -> dict:
    index, counts = GraphIndex(model.graph), Counter()
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        elem = index.elem_type(node.output[0])
        counts["fp16" if elem == onnx.TensorProto.FLOAT16 else "fp32" if elem == onnx.TensorProto.FLOAT else "other"] += 1
    return dict(counts)


def _consumer_op(index: GraphIndex, dq: onnx.NodeProto) -> str:
    return next((n.op_type for n in index.consumers.get(dq.output[0], [])), "graph output")


@contextlib.contextmanager
def _ort_quantization_kept():
    """ModelOpt's quantize() monkeypatches ONNX Runtime's calibrators and quantizers and edits its op registries
    for the rest of the process (modelopt/onnx/quantization/ort_patching.py, ort_utils.configure_ort); put them
    back on the way out, so a later cpu-form quantization in the same process runs ONNX Runtime's own code."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, registry

    owners = [calibrate, calibrate.CalibraterBase, calibrate.MinMaxCalibrater, calibrate.HistogramCalibrater,
              calibrate.HistogramCollector, qdq_quantizer.QDQQuantizer, base_quantizer.BaseQuantizer]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    registries = [(table, dict(table)) for table in (registry.QDQRegistry, registry.QLinearOpsRegistry, registry.IntegerOpsRegistry)]
    try:
        yield
    finally:
        for owner, attributes in saved:
            for name, value in attributes.items():
                if vars(owner).get(name) is not value:
                    setattr(owner, name, value)
        for table, entries in registries:
            table.clear()
            table.update(entries)


@contextlib.contextmanager
def _quiet():
    """ModelOpt prints progress to stdout and logs at INFO; keep both out of the build's output."""
    import logging

    chatter = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("modelopt", "modelopt.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):  # and its tqdm bars
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        log.debug("modelopt output:\n%s", chatter.getvalue())
