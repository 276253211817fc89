"""Split a traced ONNX model into a per-request history encoder and a per-candidate scorer.

    split(model, request_inputs) -> Split(encoder, scorer, cut)

Policy (which half a node belongs to) is decided from the graph alone, by what each value depends on:
  - request-level : computed from request-level inputs (and weights) only  -> encoder, run once per request
  - candidate     : depends on a candidate-level input                     -> scorer
  - shape-only    : depends on request-level inputs only through their shapes (Shape, Size) -> recomputed
                    on the scorer side from a tensor it already has, never shipped across the cut
  - constant      : weights and what is computed from them alone            -> copied into whichever half uses it
Two refinements keep the cut small:
  - layout ops (Transpose, Reshape, Cast, ...) on request-level values whose every consumer is in the
    scorer move to the scorer when that ships no more bytes, so one tensor never crosses in two layouts;
  - a Shape(x) the scorer needs, with x on the encoder side, is rebuilt from the symbolic dims of tensors
    the scorer has (Shape(K_1)[0] is L as well as Shape(history_item_ids)[0] is).
Nothing here knows STCA's layer names: the optional `names` hint only relabels crossing tensors after the
module that produced them (from the exporter's "namespace" metadata).

Mechanism: copy the nodes of each half into a fresh graph, derive its inputs and outputs from the cut,
carry over only the initializers and value_info it uses, then check both halves with onnx.checker.
The contract: scorer(encoder(request inputs), candidate inputs) == model(all inputs).
"""

import copy
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import LAYOUT_OPS, GraphIndex, extract_model, node_inputs, served_inputs

CONSTANT, SHAPE_ONLY, REQUEST, CANDIDATE = "constant", "shape-only", "request-level", "candidate"
SHAPE_OPS = frozenset({"Shape", "Size"})  # read the shape of their input, never its values


@dataclass(frozen=True)
class CutTensor:
    """A tensor that the encoder outputs and the scorer takes as input (a Triton ensemble edge)."""

    name: str  # as it appears in both halves, the manifest and config.pbtxt
    source: str  # its name in the traced model
    dtype: str  # numpy dtype name
    shape: tuple  # ints and symbolic dims ("L")

    def bytes_per_request(self, dims: Mapping[str, int]) -> int | None:
        """Bytes for one request once symbolic dims take the given values; None if a dim is unknown."""
        n = 1
        for d in self.shape:
            if isinstance(d, str):
                if d not in dims:
                    return None
                d = dims[d]
            n *= d
        return n * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SharedWeight:
    name: str
    bytes: int


@dataclass(frozen=True)
class Cut:
    tensors: tuple[CutTensor, ...]
    shared_weights: tuple[SharedWeight, ...]  # initializers both halves hold
    placement: Mapping[str, str]  # node name -> why it sits where it does
    request_inputs: tuple[str, ...]  # encoder inputs
    candidate_inputs: tuple[str, ...]  # scorer inputs that come straight from the request

    def bytes_per_request(self, dims: Mapping[str, int]) -> int | None:
        sizes = [t.bytes_per_request(dims) for t in self.tensors]
        return None if None in sizes else sum(sizes)


@dataclass(frozen=True)
class Split:
    encoder: onnx.ModelProto
    scorer: onnx.ModelProto
    cut: Cut


def split(model: onnx.ModelProto, request_inputs: Iterable[str], names: Mapping[str, str] | None = None) -> Split:
    """Hoist every node computable from request_inputs + weights into the encoder; the rest is the scorer.

    `names` maps a module path (from the exporter's namespace metadata) to the name its output takes
    when it crosses the cut. The caller's model is not modified.
    """
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    graph = model.graph
    served = {i.name for i in served_inputs(graph)}
    for weight_input in [i for i in graph.input if i.name not in served]:
        graph.input.remove(weight_input)
    request_inputs = set(request_inputs)
    graph_inputs = [i.name for i in graph.input]
    unknown = sorted(request_inputs - set(graph_inputs))
    if unknown:
        raise CompilerError(f"partition: request input(s) {unknown} are not inputs of the model; it has {graph_inputs}")
    if not set(graph_inputs) - request_inputs:
        raise CompilerError("partition: every input is request-level; there is no candidate side to split off")

    analysis = _Analysis(graph, request_inputs)
    for out in graph.output:
        if analysis.level[out.name] != CANDIDATE:
            raise CompilerError(
                f"partition: output {out.name!r} does not depend on any candidate input; "
                "a split model must compute every output per candidate"
            )
    scorer_nodes = analysis.place()
    return _build(model, analysis, scorer_nodes, names or {})


class _Analysis(GraphIndex):
    """Levels and placement reasons of every value of the (copied) graph, over its index."""

    def __init__(self, graph: onnx.GraphProto, request_inputs: set[str]):
        super().__init__(graph)
        self.level: dict[str, str] = {init.name: CONSTANT for init in graph.initializer}
        self.depends: dict[str, frozenset[str]] = {init.name: frozenset() for init in graph.initializer}
        for i in graph.input:
            self.level[i.name] = REQUEST if i.name in request_inputs else CANDIDATE
            self.depends[i.name] = frozenset([i.name])
        for n in self.nodes:  # ONNX graphs are topologically sorted
            level, depends = self._node_level(n)
            for out in n.output:
                self.level[out], self.depends[out] = level, depends
        self.node_level = {id(n): self.level[n.output[0]] for n in self.nodes}
        self.reason: dict[int, str] = {}

    def _node_level(self, node: onnx.NodeProto) -> tuple[str, frozenset[str]]:
        ins = [name for name in node_inputs(node) if name]
        undefined = [name for name in ins if name not in self.level]
        if undefined:
            raise CompilerError(f"partition: node {node.name or node.output[0]!r} reads {undefined}, which no node, input or "
                                "initializer before it defines")
        depends = frozenset().union(*(self.depends[name] for name in ins))
        levels = {self.level[name] for name in ins}
        if CANDIDATE in levels:
            return CANDIDATE, depends
        if node.op_type in SHAPE_OPS:
            return (CONSTANT if levels <= {CONSTANT} else SHAPE_ONLY), depends
        if REQUEST in levels:
            return REQUEST, depends
        return (SHAPE_ONLY if SHAPE_ONLY in levels else CONSTANT), depends

    def place(self) -> set[int]:
        """Ids of request-level layout nodes that run in the scorer instead, so their input crosses the cut."""
        moved: set[int] = set()

        def in_scorer(node):
            return self.node_level[id(node)] == CANDIDATE or id(node) in moved

        changed = True
        while changed:
            changed = False
            for n in reversed(self.nodes):
                if id(n) in moved or self.node_level[id(n)] != REQUEST or n.op_type not in LAYOUT_OPS:
                    continue
                data, out = n.input[0], n.output[0]
                users = self.consumers.get(out, [])
                if self.level.get(data) != REQUEST or not users or not all(in_scorer(u) for u in users):
                    continue
                ships_anyway = any(in_scorer(u) for u in self.consumers.get(data, []) if u is not n)
                if ships_anyway or self.nbytes(data) <= self.nbytes(out):
                    moved.add(id(n))
                    self.reason[id(n)] = f"layout op moved to the scorer: only the scorer uses it, so {data!r} crosses instead"
                    changed = True
        return moved

    def explain(self, node: onnx.NodeProto) -> str:
        if id(node) in self.reason:
            return self.reason[id(node)]
        level, deps = self.node_level[id(node)], ", ".join(sorted(self.depends[node.output[0]]))
        return {
            CANDIDATE: f"candidate: depends on {deps}",
            REQUEST: f"request-level: computed from {deps} and weights",
            SHAPE_ONLY: f"shape-only: computed from the shapes of {deps}, recomputed where needed",
            CONSTANT: "constant: from weights only, copied where needed",
        }[level]

    def nbytes(self, name: str, symbol_size: int = 10_000) -> float:
        """Bytes of a value with every symbolic dim taken as `symbol_size`: only used to compare two values."""
        shape = self.shape(name)
        if shape is None or name not in self.types:
            return float("inf")
        return int(np.prod([d if isinstance(d, int) else symbol_size for d in shape])) * np.dtype(self.dtype(name)).itemsize


def _build(model: onnx.ModelProto, a: _Analysis, moved: set[int], names: Mapping[str, str]) -> Split:
    graph = model.graph
    scorer_core = [n for n in a.nodes if a.node_level[id(n)] == CANDIDATE or id(n) in moved]
    encoder_core = [n for n in a.nodes if a.node_level[id(n)] == REQUEST and id(n) not in moved]
    request_graph_inputs = [i.name for i in graph.input if a.level[i.name] == REQUEST]
    candidate_graph_inputs = [i.name for i in graph.input if a.level[i.name] == CANDIDATE]

    # Walk back from the scorer: request-level values it reads cross the cut; shape-only and constant
    # nodes are recomputed there; Shape(x) of a request-level x is set aside to be rebuilt.
    crossing, scorer_helpers, shape_reads = _walk_back(a, scorer_core, request_side=False)
    available = {t: a.shape(t) for t in crossing + candidate_graph_inputs}
    rebuilt: list[onnx.NodeProto] = []
    shipped: list[onnx.NodeProto] = []
    for node in shape_reads:
        x = node.input[0]
        if x in available:
            scorer_helpers.append(node)
            continue
        replacement = _rebuild_shape(node, a.shape(x), available, taken=set(a.level))
        if replacement is None:  # no scorer-side tensor carries these dims: ship the shape itself (a few bytes)
            shipped.append(node)
            crossing.append(node.output[0])
            a.reason[id(node)] = f"shape shipped: no scorer-side tensor carries the dims of {x!r}"
        else:
            rebuilt.extend(replacement)
            sources = sorted({r.input[0] for r in replacement if r.op_type == "Shape"})
            a.reason[id(node)] = f"shape-only: the shape of {x!r}, recomputed on the scorer side from {sources}"
    crossing = _ordered(a, crossing)
    scorer_nodes = _toposort(rebuilt + scorer_helpers + scorer_core, set(crossing + candidate_graph_inputs))
    _, encoder_helpers, _ = _walk_back(a, encoder_core + shipped, request_side=True)
    encoder_nodes = _toposort(encoder_helpers + encoder_core + shipped, set(request_graph_inputs))
    if not encoder_nodes:
        raise CompilerError(
            f"partition: nothing computes from the request-level inputs {request_graph_inputs} alone (every use of them "
            "also reads a candidate input), so there is no per-request work to encode once; serve the model unsplit"
        )

    renamed = _cut_names(a, crossing, names)
    encoder_inputs = [i for i in request_graph_inputs if any(i in node_inputs(n) for n in encoder_nodes)]
    candidate_inputs = [i for i in candidate_graph_inputs if any(i in node_inputs(n) for n in scorer_nodes)]
    encoder = extract_model(a, model, encoder_nodes, encoder_inputs, [t for t in crossing if t not in request_graph_inputs], renamed, "history_encoder")
    scorer = extract_model(a, model, scorer_nodes, crossing + candidate_inputs, [o.name for o in graph.output], renamed, "candidate_scorer")
    for half, role in ((encoder, "encoder"), (scorer, "scorer")):
        try:
            onnx.checker.check_model(half, full_check=True)
        except onnx.checker.ValidationError as e:
            raise RuntimeError(f"partition produced an invalid {role} graph: {e}") from e
    leaked = set(candidate_graph_inputs) & {i.name for i in encoder.graph.input}
    if leaked:
        raise RuntimeError(f"partition: the encoder reads candidate input(s) {sorted(leaked)}")

    encoder_weights = {i.name for i in encoder.graph.initializer}
    shared = tuple(
        SharedWeight(init.name, _tensor_bytes(init))
        for init in scorer.graph.initializer
        if init.name in encoder_weights and _tensor_bytes(init) > 64  # folded scalars are not worth a line
    )
    tensors = tuple(CutTensor(renamed.get(t, t), t, a.dtype(t), a.shape(t)) for t in crossing)
    placement = {n.name or n.output[0]: a.explain(n) for n in a.nodes}
    return Split(encoder, scorer, Cut(tensors, shared, placement, tuple(encoder_inputs), tuple(candidate_inputs)))


def _walk_back(a: _Analysis, core: list[onnx.NodeProto], request_side: bool):
    """From the inputs of `core`, collect the shape-only and constant nodes it needs.

    Returns (request-level values read but not computed by core, helper nodes, Shape nodes of request-level
    values). On the request side those Shape nodes are ordinary helpers; on the scorer side they are
    returned apart, because their input is not there.
    """
    made = {o for n in core for o in n.output}
    reads, helpers, shape_reads, seen = [], [], [], set()
    pending = [name for n in core for name in node_inputs(n)]
    while pending:
        name = pending.pop()
        if not name or name in seen or name in made:
            continue
        seen.add(name)
        if a.level.get(name) == REQUEST:
            reads.append(name)
            continue
        node = a.producer.get(name)
        if node is None:  # an initializer or a graph input
            continue
        if node.op_type in SHAPE_OPS and a.level.get(node.input[0]) == REQUEST and not request_side:
            shape_reads.append(node)
            continue
        helpers.append(node)
        pending.extend(node_inputs(node))
    return reads, helpers, shape_reads


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's algorithm over the given nodes, linear in nodes and edges; values no given node makes (or that
    are `available`) count as present. Nodes that become ready together keep their given order."""
    nodes = list({id(n): n for n in nodes}.values())
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)  # inputs each node still waits for
    readers: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        for value in set(node_inputs(node)):
            if value and value not in available and value in producer:
                waiting[k] += 1
                readers.setdefault(producer[value], []).append(k)
    ready = deque(k for k, w in enumerate(waiting) if w == 0)
    ordered = []
    while ready:
        k = ready.popleft()
        ordered.append(nodes[k])
        for reader in readers.get(k, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(ordered) < len(nodes):
        stuck = [n.name or n.output[0] for k, n in enumerate(nodes) if waiting[k]]
        raise RuntimeError(f"partition: cycle between nodes {stuck[:5]}")
    return ordered


def _rebuild_shape(node: onnx.NodeProto, dims: tuple | None, available: Mapping[str, tuple], taken: set[str]) -> list | None:
    """Nodes computing node's output (Shape or Size of a value with `dims`) from tensors in `available`; the values
    they add get names not in `taken` (every value name of the graph), which is updated."""
    if dims is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
    wanted = dims[max(start, 0) : min(end, rank)] if node.op_type == "Shape" else dims
    out, pieces, nodes = node.output[0], [], []
    for k, d in enumerate(wanted):
        piece = _fresh(f"{out}__dim{k}", taken)
        if isinstance(d, int):
            nodes.append(helper.make_node("Constant", [], [piece], value=numpy_helper.from_array(np.array([d], np.int64))))
        else:
            source = next(((t, j) for t, shape in available.items() for j, s in enumerate(shape or ()) if s == d), None)
            if d == "?" or source is None:
                return None
            nodes.append(helper.make_node("Shape", [source[0]], [piece], start=source[1], end=source[1] + 1))
        pieces.append(piece)
    if node.op_type == "Shape":
        if pieces:
            nodes.append(helper.make_node("Concat", pieces, [out], axis=0))
        else:
            nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.zeros([0], np.int64))))
    else:  # Size: the product of the dims, as a scalar
        shape = _fresh(f"{out}__shape", taken)
        nodes.append(helper.make_node("Concat", pieces, [shape], axis=0))
        nodes.append(helper.make_node("ReduceProd", [shape], [out], keepdims=0))
    for i, n in enumerate(nodes):
        n.name = f"{node.name or out}__rebuilt{i}"
    return nodes


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name` with the first free numeric suffix; recorded as taken."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _cut_names(a: _Analysis, crossing: list[str], names: Mapping[str, str]) -> dict[str, str]:
    """Crossing tensor -> the name `names` gives its producing module (the innermost listed module wins).

    A name two crossing tensors would share, or one another value of the graph already has, is not used.
    """
    proposed = {}
    for t in crossing:
        paths = _module_paths(a.producer[t]) if t in a.producer else []
        label = next((names[p] for p in reversed(paths) if p in names), None)
        if label is not None:
            proposed[t] = label
    labels = list(proposed.values())
    return {t: new for t, new in proposed.items() if labels.count(new) == 1 and (new == t or new not in a.types)}


def _module_paths(node: onnx.NodeProto) -> list[str]:
    """Module paths from the root to the node, from the torch exporter's namespace metadata."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            segments = prop.value.split("/")[1:-1]  # drop the root model and the aten op
            return [s.split(": ")[0] for s in segments]
    return []


def _ordered(a: _Analysis, names: list[str]) -> list[str]:
    """Graph inputs first (in input order), then values in the order the model computes them."""
    position = {i.name: k for k, i in enumerate(a.graph.input)}
    for k, n in enumerate(a.nodes):
        for o in n.output:
            position.setdefault(o, len(position) + k)
    return sorted(dict.fromkeys(names), key=lambda t: position[t])


def _tensor_bytes(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
