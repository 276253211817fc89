"""One index of an ONNX graph: who produces and who reads each value, which values are constants, their types.

    index = GraphIndex(model.graph)
    index.producer["K_1"], index.consumers["K_1"], index.constant("axes"), index.shape("K_1"), index.is_weight(name)

Every pass that asks these questions (partition, precision, lint) asks this class, so they agree: a weight
seen through a layout op is a weight everywhere. The index is a snapshot: a pass that edits the graph
builds a new one. It reads protobuf directly because the passes copy and rewrite protobuf nodes (partition
moves them into two new graphs; the precision tools take and return ModelProtos), so a second object graph
such as onnx-ir's would have to be kept in step with the one being edited.
"""

import copy
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Ops that only re-lay out (or re-type) one data input; their other inputs are shapes or constants.
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"})


class GraphIndex:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes = list(graph.node)
        self.producer: dict[str, onnx.NodeProto] = {out: n for n in self.nodes for out in n.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in node_inputs(n):
                self.consumers.setdefault(name, []).append(n)
        self.initializers = {init.name: init for init in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in self.nodes if n.op_type == "Constant"}
        self.types: dict[str, onnx.TypeProto] = {vi.name: vi.type for vi in [*graph.value_info, *graph.input, *graph.output]}
        for init in graph.initializer:
            self.types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))

    def is_constant(self, name: str) -> bool:
        """An initializer or the output of a Constant node."""
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant (initializer or Constant node with a tensor `value`), else None."""
        tensor = self._constant_tensor(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def _constant_tensor(self, name: str) -> onnx.TensorProto | None:
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        return next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None

    def is_weight(self, name: str) -> bool:
        """A constant, or a constant seen through layout ops (a transposed or reshaped weight is still a weight)."""
        while not self.is_constant(name) and name in self.producer and self.producer[name].op_type in LAYOUT_OPS:
            name = self.producer[name].input[0]
        return self.is_constant(name)

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of a value, where the graph declares it."""
        t = self.types.get(name)
        if t is not None:
            return t.tensor_type.elem_type
        tensor = self._constant_tensor(name)
        return None if tensor is None else tensor.data_type

    def shape(self, name: str) -> tuple | None:
        """Dims of a value: ints, symbolic names, or "?" for an unnamed unknown dim; None if unknown."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return tuple(
            d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.tensor_type.shape.dim
        )

    def dtype(self, name: str) -> str:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type(name))).name


def served_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The inputs a client sends. An input with an initializer of its name is a weight with an overridable default
    (IR < 4 exporters list every weight so): served, it is a weight, never something a client sends."""
    weights = {init.name for init in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def extract_model(
    a: GraphIndex,
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inputs: list[str],
    outputs: list[str],
    renamed: Mapping[str, str],
    graph_name: str,
) -> onnx.ModelProto:
    """A standalone model of `nodes` (copied, in the given order) of `model`, indexed by `a`: its inputs and outputs
    as named, values renamed by `renamed` (old -> new), and only the initializers and functions it reads."""
    used = {name for n in nodes for name in node_inputs(n)}
    made = {o for n in nodes for o in n.output}
    new_nodes = [copy.deepcopy(n) for n in nodes]
    for n in new_nodes:
        rename_node(n, renamed)

    def value_info(name: str) -> onnx.ValueInfoProto:
        if name not in a.types:
            raise RuntimeError(f"extract: no type known for {name!r}; shape inference could not type it")
        return helper.make_value_info(renamed.get(name, name), a.types[name])

    new_graph = helper.make_graph(
        new_nodes,
        graph_name,
        [value_info(i) for i in inputs],
        [value_info(o) for o in outputs],
        initializer=[copy.deepcopy(init) for init in model.graph.initializer if init.name in used],
        value_info=[value_info(v) for v in sorted(made - set(outputs)) if v in a.types],
    )
    extracted = helper.make_model(
        new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version, producer_name="stca-compiler"
    )
    extracted.functions.extend(f for f in model.functions if any((n.domain, n.op_type) == (f.domain, f.name) for n in nodes))
    return extracted


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope values its subgraphs (If, Loop, Scan) read."""
    names = list(node.input)
    for g in subgraphs(node):
        local = {i.name for i in g.input} | {init.name for init in g.initializer}
        for sub in g.node:
            names.extend(i for i in node_inputs(sub) if i and i not in local)
            local.update(sub.output)
    return names


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for attr in node.attribute for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)]


def rename_node(node: onnx.NodeProto, renamed) -> None:
    """Rename the values a node (and any subgraph in it) reads and writes, by `renamed` (old -> new)."""
    for i, name in enumerate(node.input):
        node.input[i] = renamed.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = renamed.get(name, name)
    for g in subgraphs(node):
        for sub in g.node:
            rename_node(sub, renamed)
