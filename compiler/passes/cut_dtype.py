"""Cut dtype pass: ship the cut tensors in fp16, half the bytes that cross from the encoder to the scorer.

On the embedded server every cut tensor is copied out of the encoder's Python-backend stub, into the
server, and into the scorer's stub (20 MB per request at L=10,000 for the demo model in fp32); on a GPU
it is device memory the scorer reads once per candidate block. An fp16 or int8 build computes in fp16
(or narrower) on both sides anyway, but the precision stage keeps each half's I/O in fp32, so the cut
crossed in fp32 with a cast on either side. This pass moves those casts across the cut:

    encoder: ... -> x (fp16) -> Cast(fp32) -> K_1        becomes   ... -> x (fp16) -> K_1 (fp16)
             ... -> x (fp32) -> K_1                      becomes   ... -> x -> Cast(fp16) -> K_1 (fp16)
    scorer:  K_1 (fp32) -> Cast(fp16) -> consumers       becomes   K_1 (fp16) -> consumers
             K_1 (fp32) -> consumers                     becomes   K_1 (fp16) -> Cast(fp32) -> consumers

Postcondition: each narrowed tensor is an fp16 output of the encoder and an fp16 input of the scorer,
and no other value of either graph changed dtype. A float32 cut tensor is narrowed only if its values on
the sample requests fit fp16's finite range: the attention mask's key bias holds -1e9 for padding, which
fp16 would turn into -inf (and a fully padded row into NaN), so it stays fp32, and the pass says why.
"""

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import rename_node
from compiler.passes.partition import Split

FP16_MAX = float(np.finfo(np.float16).max)


class CutDtypeError(CompilerError):
    """The graphs do not have the shape this pass rewrites."""


@dataclass(frozen=True)
class NarrowedCut:
    split: Split  # both halves rewritten, the cut's tensors with the dtypes they now cross in
    narrowed: tuple[str, ...]  # cut tensors that now cross in fp16
    kept: dict  # cut tensor -> why it stays as it was


def narrow_cut(split: Split, samples: list[dict]) -> NarrowedCut:
    """Rewrite both halves so the float32 cut tensors whose sampled values fit fp16 cross as fp16.
    `samples` are the encoder's outputs on a few requests ({cut tensor name: array})."""
    encoder, scorer = _copy(split.encoder), _copy(split.scorer)
    outputs = {o.name: o for o in encoder.graph.output}
    inputs = {i.name: i for i in scorer.graph.input}
    narrowed, kept = [], {}
    for name, value in outputs.items():
        if name not in inputs:
            continue  # a request-level output the scorer does not read (none in STCA), left alone
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            kept[name] = f"dtype {helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)}, not float32"
            continue
        largest = max(float(np.max(np.abs(s[name]))) if s[name].size else 0.0 for s in samples)
        if not np.isfinite(largest) or largest > FP16_MAX:
            kept[name] = f"values up to {largest:.3g} do not fit fp16 (max {FP16_MAX:.0f})"
            continue
        _narrow_output(encoder.graph, name)
        _widen_input(scorer.graph, name)
        outputs[name].type.tensor_type.elem_type = TensorProto.FLOAT16
        inputs[name].type.tensor_type.elem_type = TensorProto.FLOAT16
        narrowed.append(name)
    for graph in (encoder, scorer):
        onnx.checker.check_model(graph)
    cut = replace(split.cut, tensors=tuple(replace(t, dtype="float16") if t.name in narrowed else t for t in split.cut.tensors))
    return NarrowedCut(Split(encoder, scorer, cut), tuple(narrowed), kept)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _narrow_output(graph: onnx.GraphProto, name: str) -> None:
    """Make graph output `name` fp16: drop a trailing fp16->fp32 Cast, else append an fp32->fp16 Cast."""
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "Cast" and _cast_to(producer) == TensorProto.FLOAT and _is_fp16(graph, producer.input[0]):
        source = producer.input[0]
        graph.node.remove(producer)
        _forget_types(graph, source, name)
        for node in graph.node:  # the fp16 value takes the output's name; readers of either now read it
            rename_node(node, {source: name})
        return
    inner = f"{name}__fp32"
    _forget_types(graph, name)
    for node in graph.node:
        rename_node(node, {name: inner})
    graph.node.append(helper.make_node("Cast", [inner], [name], to=TensorProto.FLOAT16, name=f"{name}__to_fp16"))


def _widen_input(graph: onnx.GraphProto, name: str) -> None:
    """Make graph input `name` fp16 for its readers: bypass fp32->fp16 Casts that read it, and give every
    other reader an fp16->fp32 Cast."""
    readers = [n for n in graph.node if name in n.input]
    to_fp16 = [n for n in readers if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT16]
    for cast in to_fp16:
        graph.node.remove(cast)
        for node in graph.node:
            rename_node(node, {cast.output[0]: name})
        for out in graph.output:
            if out.name == cast.output[0]:
                raise CutDtypeError(f"cut dtype: {name}'s cast {cast.name} is a graph output")
    others = [n for n in readers if n not in to_fp16]
    if others:
        wide = f"{name}__fp32"
        for node in others:
            rename_node(node, {name: wide})
        graph.node.insert(0, helper.make_node("Cast", [name], [wide], to=TensorProto.FLOAT, name=f"{name}__to_fp32"))


def _forget_types(graph: onnx.GraphProto, *values: str) -> None:
    """Drop shape-inference records of renamed values (they would contradict the new dtypes)."""
    for info in [v for v in graph.value_info if v.name in values]:
        graph.value_info.remove(info)


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _is_fp16(graph: onnx.GraphProto, value: str) -> bool:
    """Whether `value` is produced in fp16: by a Cast to fp16, or as recorded by shape inference."""
    producer = next((n for n in graph.node if value in n.output), None)
    if producer is not None and producer.op_type == "Cast":
        return _cast_to(producer) == TensorProto.FLOAT16
    info = next((v for v in graph.value_info if v.name == value), None)
    return info is not None and info.type.tensor_type.elem_type == TensorProto.FLOAT16

