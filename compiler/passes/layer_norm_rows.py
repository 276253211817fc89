"""Layer-norm rows pass: a LayerNormalization of a rank >= 3 sum runs on its (rows, D) view.

ONNX Runtime's CPU graph optimizer fuses Add + LayerNormalization over the last axis of a 3-D tensor into
its contrib op SkipLayerNormalization, and that kernel is several times slower than the two ops it replaces
(onnxruntime 1.32, AVX2, one thread, (128, 8, 256): 1.61 ms fused against 0.39 ms on rows;
benchmarks/layer_norm_rows.py, docs/benchmarks.md). STCA's RankMixer normalizes x + mixed and x + ffn,
each (N, T, D), so every scorer and unsplit run paid it. The fusion only matches a 3-D Add feeding the
norm directly, so this pass puts a Flatten between them:

    y = LayerNormalization(Add(a, b), scale, bias, axis=-1)
becomes
    s = Add(a, b);  y = Reshape(LayerNormalization(Flatten(s, axis=-1), scale, bias, axis=-1), Shape(s))

Same arithmetic, row by row (a norm over the last axis treats every leading index alike); Flatten and
Reshape only relabel the shape (the benchmark's "on rows" times include them). The rewrite is generic: it
matches the pattern, not STCA's names. Postcondition: no LayerNormalization reads a rank >= 3 Add output
directly, and the model passes onnx.checker. A norm over more than the last axis, or one that also returns
its mean and inverse standard deviation, is left as it is: on the (rows, D) view it would compute, or
return, something else.
"""

import onnx
from onnx import helper

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import GraphIndex


class LayerNormRowsError(CompilerError):
    """The rewritten model breaks the pass's postcondition."""


def layer_norms_on_rows(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every LayerNormalization of a rank >= 3 Add output run on the 2-D view, and how many."""
    model = onnx.shape_inference.infer_shapes(model)  # a copy, with the ranks the pattern needs
    index = GraphIndex(model.graph)
    nodes, rewritten = [], 0
    for node in index.nodes:
        if not _matches(node, index):
            nodes.append(node)
            continue
        summed, out = node.input[0], node.output[0]
        name = node.name or out
        rows, normed, shape = f"{out}__rows", f"{out}__rows_normed", f"{out}__shape"
        norm = helper.make_node("LayerNormalization", [rows, *node.input[1:]], [normed], name=name, axis=-1)
        norm.attribute.extend(a for a in node.attribute if a.name != "axis")  # epsilon, stash_type
        nodes += [
            helper.make_node("Flatten", [summed], [rows], name=f"{name}/flatten", axis=-1),
            norm,
            helper.make_node("Shape", [summed], [shape], name=f"{name}/shape"),
            helper.make_node("Reshape", [normed, shape], [out], name=f"{name}/reshape"),
        ]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _check(model)
    return model, rewritten


def _matches(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
        return False
    if len([o for o in node.output if o]) != 1:
        return False  # Mean / InvStdDev are per leading index: their shape would change
    shape = index.shape(node.input[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    source = index.producer.get(node.input[0])
    return (shape is not None and len(shape) >= 3 and axis in (-1, len(shape) - 1)
            and source is not None and source.op_type == "Add")


def _check(model: onnx.ModelProto) -> None:
    index = GraphIndex(model.graph)  # the shapes inferred before the rewrite; the new values are no norm's Add input
    left = [n.name or n.output[0] for n in index.nodes if _matches(n, index)]
    if left:
        raise LayerNormRowsError(f"layer-norm rows: {left[:3]} still normalize a rank >= 3 Add output directly")
    onnx.checker.check_model(model, full_check=True)
