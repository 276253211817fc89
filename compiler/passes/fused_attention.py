"""Fused attention pass: multi-head attention over a key bias runs as ONNX Runtime's MultiHeadAttention.

The exported scorer materializes every layer's score matrix: per head, N candidates x L history items
(128 x 10,000 x 4 heads: 5.1 M floats a layer), written by QK^T, read and rewritten by the key-bias Add and by
Softmax, read again by alpha V. ONNX Runtime's CPU MultiHeadAttention (contrib domain com.microsoft) runs
MLAS's flash-attention kernel, which walks the keys in blocks that fit the L2 cache and never holds the N x L
matrix, but only without a mask or an additive bias (with either it falls back to the materializing kernel).
So the key bias travels as one more key dimension:

    softmax(Q K^T + 1 b^T) V  =  softmax([Q, 1] [K, b]^T) V      (b: one bias per key, 0 or MASKED_LOGIT)

Q gains a column of ones and K the bias column, per head: head size d + 1 for queries and keys, d for values,
with MultiHeadAttention's scale set to 1 because the exported graph already scaled Q. Where a bias is 0 the
extra term adds an exact 0; a masked key's logit is as far below the others as before, so its weight is 0.

Matched, by pattern and shapes, never by name (the exported layout of compiler.stca.model's `kv` form):

    S = MatMul(Qh, Kt)      Qh (h, N, d); Kt (h, d, L) = Transpose(K3, perm=[1, 2, 0]), K3 (L, h, d)
    A = Add(S, b)           b: one value per key, shape (L,) or (1, .., 1, L); optional
    P = Softmax(A, axis=-1)
    O = MatMul(P, Vh)       Vh (h, L, d_v) = Transpose(V3, perm=[1, 0, 2]), V3 (L, h, d_v)

with h, d, d_v known integers and every matmul in float32 (ONNX Runtime's CPU kernel is fp32 only: an fp16
graph keeps its form). O keeps its name and layout, so nothing downstream changes. The `reordered` form (no
per-head keys) and anything else is left as it is. Postcondition: no matched pattern remains, the model passes
onnx.checker; the rewritten model holds no tensor with both an N and an L dim (tests check on ONNX Runtime
that the values are the original's). TensorRT's parser does not take the contrib op: only graphs ONNX Runtime
serves on the CPU are rewritten (compiler.build), and the lint records the nodes as ONNX Runtime's
(compiler.passes.lint).
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import GraphIndex

FUSED_OP, FUSED_DOMAIN = "MultiHeadAttention", "com.microsoft"


class FusedAttentionError(CompilerError):
    """The rewritten model breaks the pass's postcondition."""


@dataclass(frozen=True)
class _Match:
    scores: onnx.NodeProto  # S = MatMul(Qh, Kt)
    bias_add: onnx.NodeProto | None  # A = Add(S, b)
    softmax: onnx.NodeProto
    context: onnx.NodeProto  # O = MatMul(P, Vh)
    query: str  # Qh (h, N, d)
    keys: str  # K3 (L, h, d)
    values: str  # V3 (L, h, d_v)
    bias: str | None
    heads: int
    head_size: int
    value_head_size: int


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every matched attention run as one MultiHeadAttention, and how many were (`model`
    itself where none matched)."""
    inferred = onnx.shape_inference.infer_shapes(model)  # a copy, with the shapes and types the pattern needs
    index = GraphIndex(inferred.graph)
    matches = [m for m in (_match(n, index) for n in index.nodes) if m is not None]
    if not matches:
        return model, 0
    model = inferred
    replaced = {id(n): m for m in matches for n in (m.scores, m.bias_add, m.softmax) if n is not None}
    at_context = {id(m.context): m for m in matches}
    nodes, constants = [], {}
    for node in index.nodes:
        if id(node) in at_context:  # every input of the pattern is made before its last node
            nodes += _fused(at_context[id(node)], constants)
        elif id(node) not in replaced:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(_live(nodes, model.graph))
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    made = {o for n in model.graph.node for o in n.output}
    kept_info = [vi for vi in model.graph.value_info if vi.name in made]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    if not any(o.domain == FUSED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    _check(model)
    return model, len(matches)


def _match(node: onnx.NodeProto, index: GraphIndex) -> _Match | None:
    if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    if axis not in (-1, 2) or len(index.shape(node.input[0]) or ()) != 3:
        return None
    bias_add, bias = None, None
    source = index.producer.get(node.input[0])
    if source is not None and source.op_type == "Add" and _only_reader(source.output[0], node, index):
        bias_add = source
        scores_name = next((i for i in source.input if _op(index, i) == "MatMul"), None)
        bias = next((i for i in source.input if i != scores_name), None) if scores_name else None
        source = index.producer.get(scores_name) if scores_name else None
    if source is None or source.op_type != "MatMul" or not _only_reader(source.output[0], bias_add or node, index):
        return None
    readers = index.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[0] != node.output[0]:
        return None
    if not _only_reader(node.output[0], readers[0], index):  # the weights are a graph output
        return None
    scores, context = source, readers[0]
    if any(index.elem_type(v) != onnx.TensorProto.FLOAT for v in (*scores.input, *context.input)):
        return None
    query, keys = scores.input
    values = context.input[1]
    keys3, values3 = _seen_through(keys, (1, 2, 0), index), _seen_through(values, (1, 0, 2), index)
    q, k, v = index.shape(query), index.shape(keys3 or ""), index.shape(values3 or "")
    if None in (q, k, v) or not len(q) == len(k) == len(v) == 3:
        return None
    heads, head_size, value_head_size = q[0], q[2], v[2]
    if not all(isinstance(x, int) for x in (heads, head_size, value_head_size)):
        return None
    if (k[1], k[2], v[1]) != (heads, head_size, heads) or k[0] != v[0]:
        return None
    if bias is not None and not _per_key(index.shape(bias), k[0]):
        return None
    return _Match(scores, bias_add, node, context, query, keys3, values3, bias, heads, head_size, value_head_size)


def _op(index: GraphIndex, name: str) -> str | None:
    producer = index.producer.get(name)
    return producer.op_type if producer is not None else None


def _only_reader(name: str, reader: onnx.NodeProto, index: GraphIndex) -> bool:
    return [id(n) for n in index.consumers.get(name, [])] == [id(reader)] and name not in {o.name for o in index.graph.output}


def _seen_through(name: str, perm: tuple[int, ...], index: GraphIndex) -> str | None:
    """The (L, h, d) tensor that `name` transposes by `perm`, if that is how it is made."""
    producer = index.producer.get(name)
    if producer is None or producer.op_type != "Transpose":
        return None
    return producer.input[0] if tuple(next((a.ints for a in producer.attribute if a.name == "perm"), ())) == perm else None


def _per_key(shape: tuple | None, keys) -> bool:
    """A bias of one value per key: (L,) or (1, .., 1, L)."""
    return shape is not None and 1 <= len(shape) <= 3 and shape[-1] == keys and all(d == 1 for d in shape[:-1])


def _fused(m: _Match, constants: dict) -> list[onnx.NodeProto]:
    """The nodes that make O from Qh, K3, V3 and b through one MultiHeadAttention."""
    h, d, dv, out = m.heads, m.head_size, m.value_head_size, m.context.output[0]
    p = f"{out}__mha"

    def constant(suffix: str, value) -> str:
        constants[f"{p}/{suffix}"] = np.asarray(value)
        return f"{p}/{suffix}"

    def rows(width: int) -> str:  # (B=1, rows, h * head size): MultiHeadAttention's 3-D layout
        return constant(f"rows_{width}", np.array([1, -1, width], np.int64))

    nodes = [helper.make_node("Transpose", [m.query], [f"{p}/query_nhd"], perm=[1, 0, 2])]
    query_rows, key_rows, width = f"{p}/query_nhd", m.keys, h * d
    if m.bias is not None:  # [Q, 1] and [K, b], per head
        one = constant("one", np.array([1], np.int64))
        nodes += [
            helper.make_node("Shape", [f"{p}/query_nhd"], [f"{p}/query_nh"], end=2),
            helper.make_node("Concat", [f"{p}/query_nh", one], [f"{p}/ones_shape"], axis=0),
            helper.make_node("ConstantOfShape", [f"{p}/ones_shape"], [f"{p}/ones"],
                             value=numpy_helper.from_array(np.array([1], np.float32))),
            helper.make_node("Concat", [f"{p}/query_nhd", f"{p}/ones"], [f"{p}/query_with_one"], axis=2),
            helper.make_node("Reshape", [m.bias, constant("bias_shape", np.array([-1, 1, 1], np.int64))], [f"{p}/bias_l11"]),
            helper.make_node("Shape", [m.keys], [f"{p}/keys_lh"], end=2),
            helper.make_node("Concat", [f"{p}/keys_lh", one], [f"{p}/bias_shape_lh1"], axis=0),
            helper.make_node("Expand", [f"{p}/bias_l11", f"{p}/bias_shape_lh1"], [f"{p}/bias_lh1"]),
            helper.make_node("Concat", [m.keys, f"{p}/bias_lh1"], [f"{p}/keys_with_bias"], axis=2),
        ]
        query_rows, key_rows, width = f"{p}/query_with_one", f"{p}/keys_with_bias", h * (d + 1)
    nodes += [
        helper.make_node("Reshape", [query_rows, rows(width)], [f"{p}/query"]),
        helper.make_node("Reshape", [key_rows, rows(width)], [f"{p}/keys"]),
        helper.make_node("Reshape", [m.values, rows(h * dv)], [f"{p}/values"]),
        helper.make_node(FUSED_OP, [f"{p}/query", f"{p}/keys", f"{p}/values"], [f"{p}/context"], domain=FUSED_DOMAIN,
                         name=m.softmax.name or p, num_heads=h, scale=1.0),  # Q arrives scaled
        helper.make_node("Reshape", [f"{p}/context", constant("nhd", np.array([-1, h, dv], np.int64))], [f"{p}/context_nhd"]),
        helper.make_node("Transpose", [f"{p}/context_nhd"], [out], perm=[1, 0, 2]),  # O's (h, N, d_v) layout
    ]
    return nodes


def _live(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`nodes` less those whose every output nobody reads any more (the K and V transposes the pattern read)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def _check(model: onnx.ModelProto) -> None:
    index = GraphIndex(model.graph)
    left = [n.name or n.output[0] for n in index.nodes if _match(n, index)]
    if left:
        raise FusedAttentionError(f"fused attention: {left[:3]} still materialize their attention scores")
    onnx.checker.check_model(model, full_check=True)
