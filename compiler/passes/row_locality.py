"""Row locality of the history encoder, and its split into a key graph and a row graph for a served row cache.

    row_graphs(encoder) -> RowGraphs(key_graph, row_graph, keys, cached, passthrough)   or raises NotRowLocal

A tensor the encoder outputs is row-local along the history axis L when each of its rows is a function of
that history item's own inputs and the weights: no op on the way mixes rows (a reduction, softmax or matmul
contraction over L, a reshape that moves L) and nothing reads L itself (a position, a length). Its row key
is the narrowest set of per-row integer values the row depends on: walking back from the tensor through
row-local ops, the first integer (or bool) values with one entry per row. For STCA that is the hashed item
row, the action and the age bucket, not the raw age in seconds, which changes with every request. The
analysis reads the graph only (op semantics along the symbolic L dim); nothing here knows STCA's names.

  key graph : the encoder's inputs -> row_key_0 .. row_key_{k-1} (each [L]) and the passthrough outputs
              (what has no rows along L, such as the user tokens: cheap, computed per request)
  row graph : row_key_0 .. row_key_{k-1} (one entry per distinct key along L) -> the cached outputs' rows

Postcondition: for every request r, with keys = key_graph(r), stacking rows = row_graph(unique keys) back in
request order gives encoder(r) on every cached output, and key_graph(r) gives the passthrough outputs. The
analysis is structural; confirm() checks it numerically at several L, and build refuses the cache where it
does not hold. Rows computed in a batch of another size may differ in the last bits (a GEMM blocks its rows
differently), which is why confirm() compares within a tolerance set by the output's dtype.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from compiler.core.errors import CompilerError
from compiler.passes.graph_index import GraphIndex, extract_model, node_inputs
from compiler.runtime.row_cache import CachedEncoder, RowCache, RowKey, RowSpec, entry_bytes

ROW_DIM = "L"  # the symbolic history axis of STCA's exported graphs (compiler.passes.export); a user model names its own
KEY_PREFIX = "row_key_"
# Ops that compute each output element from the elements at the same (broadcast) position of their inputs.
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or",
    "Xor", "Not", "Where", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Mish", "Softplus",
    "HardSigmoid", "Exp", "Log", "Floor", "Ceil", "Round", "Abs", "Neg", "Sign", "Sqrt", "Reciprocal", "Erf", "Sin", "Cos",
    "Cast", "CastLike", "Clip", "Identity", "Max", "Min", "Sum", "Mean", "IsNaN", "IsInf", "BitShift",
    "QuantizeLinear", "DequantizeLinear",  # static scales: per tensor, or per channel along a weight's own axis
})
SHAPE_OPS = frozenset({"Shape", "Size"})
REDUCTIONS = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
                        "ReduceLogSumExp", "ReduceSumSquare"})
INTEGER_KINDS = "biu"  # numpy dtype kinds a row key may have: bool, signed, unsigned


class NotRowLocal(CompilerError):
    """The encoder's outputs are not all functions of per-row keys: a row cache would not be exact."""


# What a value is, with respect to the rows of the history. A row value carries its row axis.
CONST, WIDE, SHAPE = "constant", "request-wide", "shape-derived"  # no rows: weights; per request (user tokens); from L


@dataclass(frozen=True)
class Rows:
    axis: int


@dataclass(frozen=True)
class Mixed:
    reason: str


@dataclass(frozen=True)
class RowGraphs:
    key_graph: onnx.ModelProto
    row_graph: onnx.ModelProto
    keys: tuple[RowKey, ...]
    cached: tuple[str, ...]  # encoder outputs served from the cache, rows along axis 0
    passthrough: tuple[str, ...]  # encoder outputs the key graph computes (no rows along L)
    keys_of: dict  # cached output -> the encoder values its rows depend on (its own narrowest key)
    row_specs: dict  # cached output -> RowSpec (dtype, the shape of one row)
    # the cached output raised by log(count) where a request's repeated rows reach the scorer once
    # (compiler.passes.history_multiset); None: every row is sent
    multiplicity: str | None = None

    def to_dict(self) -> dict:
        return {"keys": [{"name": k.name, "source": k.source, "dtype": k.dtype} for k in self.keys],
                "cached": {name: {"dtype": s.dtype, "row_shape": list(s.row_shape)} for name, s in self.row_specs.items()},
                "passthrough": list(self.passthrough), "keys_of": self.keys_of, "bytes_per_row": self.bytes_per_row,
                "multiplicity": self.multiplicity}

    @property
    def bytes_per_row(self) -> int:
        return sum(s.nbytes for s in self.row_specs.values())

    def encoder(self, run_keys, run_rows, budget_bytes: int, run_encoder=None, skip: bool = False) -> CachedEncoder:
        """The served encoder over runners of the two graphs, with a cache of `budget_bytes` (0: none); with `skip`,
        requests skip a cache that does not pay (compiler.runtime.row_cache.CacheWorth), run_encoder (the whole
        encoder) answering them where there is no multiplicity."""
        cache = RowCache(budget_bytes, self.row_specs, len(self.keys)) if budget_bytes > 0 else None
        return CachedEncoder(run_keys, run_rows, list(self.keys), cache, run_encoder, self.multiplicity, skip)


@dataclass(frozen=True)
class RowLocality:
    """A build's record of its encoder's row locality: the row cache's keys and what it caches, checked against the
    encoder, and whether the repository serves it; or why the encoder has no row cache."""

    row_local: bool
    why: str = ""  # not row-local: what mixes rows
    row_graphs: dict | None = None  # row-local: RowGraphs.to_dict() (keys, cached outputs, bytes a row)
    confirmed_max_abs_difference: dict[str, float] | None = None  # output -> largest difference from the encoder
    confirmed_at_lengths: tuple[int, ...] = ()
    served: bool = False
    budget_bytes: int = 0
    multiplicity_check: str = ""  # row_graphs' multiplicity: the check's largest difference, or why every row is sent

    def to_dict(self) -> dict:
        if not self.row_local:
            return {"row_local": False, "why": self.why, "served": False}
        return {"row_local": True, **self.row_graphs, "confirmed_max_abs_difference": self.confirmed_max_abs_difference,
                "confirmed_at_lengths": list(self.confirmed_at_lengths), "served": self.served, "budget_bytes": self.budget_bytes,
                "multiplicity_check": self.multiplicity_check}

    @classmethod
    def from_dict(cls, d: dict) -> "RowLocality":
        if not d["row_local"]:
            return cls(False, d["why"])
        row_graphs = {k: d[k] for k in ("keys", "cached", "passthrough", "keys_of", "bytes_per_row")}
        row_graphs["multiplicity"] = d.get("multiplicity")  # builds before history_multiset sent every row
        return cls(True, "", row_graphs, d["confirmed_max_abs_difference"], tuple(d["confirmed_at_lengths"]), d["served"],
                   d["budget_bytes"], d.get("multiplicity_check", ""))


def row_graphs(encoder: onnx.ModelProto, row_dim: str = ROW_DIM) -> RowGraphs:
    """The key graph and row graph of `encoder` (see the module docstring), or NotRowLocal saying why not."""
    encoder = onnx.shape_inference.infer_shapes(encoder)  # ranks decide how rows broadcast; a later pass may not have typed its values
    index = GraphIndex(encoder.graph)
    state = row_states(index, row_dim)
    outputs = [o.name for o in encoder.graph.output]
    cached, passthrough = [], []
    for name in outputs:
        s = state[name]
        if isinstance(s, Mixed):
            raise NotRowLocal(f"history cache: {name} is not row-local along {row_dim}: {s.reason}")
        if isinstance(s, Rows) and s.axis != 0:
            raise NotRowLocal(f"history cache: {name} has its rows along axis {s.axis}, not 0")
        (cached if isinstance(s, Rows) else passthrough).append(name)
    if not cached:
        raise NotRowLocal(f"history cache: no encoder output has rows along {row_dim}; there is nothing per history item to cache")

    keys_of, row_nodes, row_specs = {}, {}, {}
    for name in cached:
        row_shape = (index.shape(name) or ("?",))[1:]
        if not all(isinstance(d, int) for d in row_shape):
            raise NotRowLocal(f"history cache: a row of {name} has dims {list(row_shape)}; a cached row needs a fixed shape")
        row_specs[name] = RowSpec(index.dtype(name), tuple(row_shape))
        keys, nodes, shape_reads = _walk_to_keys(index, state, name)
        keys_of[name] = _in_graph_order(index, set(keys))
        row_nodes.update(nodes)
        outside = sorted(set(shape_reads) - {o for n in row_nodes.values() for o in n.output})
        if outside:
            raise NotRowLocal(f"history cache: {name} reads the shape of {outside}, which its rows do not compute")
    sources = _in_graph_order(index, {k for keys in keys_of.values() for k in keys})
    keys = tuple(RowKey(f"{KEY_PREFIX}{j}", index.dtype(source), source) for j, source in enumerate(sources))
    renamed = {k.source: k.name for k in keys}

    key_inputs = [i.name for i in encoder.graph.input]
    key_nodes = _ancestors(index, [*sources, *passthrough])
    key_nodes += [helper.make_node("Identity", [k.source], [k.name], name=f"{k.name}__out") for k in keys]
    for k in keys:  # the key graph's outputs, new names the index gets types for
        index.types[k.name] = _row_type(index, k.source, row_dim)
    key_graph = extract_model(index, encoder, key_nodes, key_inputs, [*[k.name for k in keys], *passthrough], {}, "history_row_keys")
    ordered = [n for n in index.nodes if id(n) in row_nodes]
    row_graph = extract_model(index, encoder, ordered, list(sources), cached, renamed, "history_rows")
    for graph, role in ((key_graph, "key graph"), (row_graph, "row graph")):
        try:
            onnx.checker.check_model(graph, full_check=True)
        except onnx.checker.ValidationError as e:
            raise RuntimeError(f"history cache produced an invalid {role}: {e}") from e
    return RowGraphs(key_graph, row_graph, keys, tuple(cached), tuple(passthrough), keys_of, row_specs)


def row_states(index: GraphIndex, row_dim: str = ROW_DIM) -> dict:
    """Every value of the graph -> CONST, WIDE, SHAPE, Rows(axis) or Mixed(reason), in one pass in graph order."""
    state: dict[str, object] = {name: CONST for name in index.initializers}
    for i in index.graph.input:
        dims = index.shape(i.name) or ()
        state[i.name] = Rows(dims.index(row_dim)) if row_dim in dims else WIDE
    for node in index.nodes:
        result = _node_state(index, state, node, row_dim)
        for out in node.output:
            state[out] = result
    return state


def _node_state(index: GraphIndex, state: dict, node: onnx.NodeProto, row_dim: str):
    ins = [name for name in node_inputs(node) if name]
    states = [state[name] for name in ins]
    mixed = next((s for s in states if isinstance(s, Mixed)), None)
    if mixed is not None:
        return mixed
    if node.op_type in SHAPE_OPS:
        return CONST if all(s == CONST for s in states) else SHAPE
    if not any(isinstance(s, Rows) for s in states):
        return WIDE if WIDE in states else (SHAPE if SHAPE in states else CONST)
    op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
    where = f"{op} node {node.name or node.output[0]!r}"
    if op in ELEMENTWISE:
        return states[0] if len(ins) == 1 else _broadcast(index, ins, states, where, row_dim)  # one input: nothing to broadcast
    data = states[0]
    rank = _rank(index, ins[0])
    if op == "Gather":
        axis = _positive(attrs.get("axis", 0), rank)
        if data == CONST and isinstance(states[1], Rows):  # an embedding lookup: row j reads table[index_j]
            return Rows(axis + states[1].axis)
        if isinstance(data, Rows) and states[1] == CONST and axis != data.axis:
            return Rows(data.axis if axis > data.axis else data.axis + _rank(index, ins[1]) - 1)
        return Mixed(f"{where} gathers across {row_dim} or with per-request indices")
    if op == "Gemm":
        if data == Rows(0) and not attrs.get("transA", 0) and all(s == CONST for s in states[1:]):
            return Rows(0)
        return Mixed(f"{where} contracts over {row_dim} or multiplies by a non-constant")
    if op == "MatMul":
        if isinstance(data, Rows) and states[1] == CONST and _rank(index, ins[1]) == 2 and rank and data.axis < rank - 1:
            return data
        return Mixed(f"{where} contracts over {row_dim} or multiplies by a non-constant")
    if op == "LayerNormalization":
        if isinstance(data, Rows) and rank and data.axis < _positive(attrs.get("axis", -1), rank) and all(s == CONST for s in states[1:]):
            return data
        return Mixed(f"{where} normalizes over {row_dim}")
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        return data if rank and data.axis != _positive(attrs.get("axis", -1), rank) else Mixed(f"{where} normalizes over {row_dim}")
    if op in REDUCTIONS:
        axes = attrs.get("axes") or (list(index.constant(ins[1])) if len(ins) > 1 and index.is_constant(ins[1]) else None)
        if axes is None or not rank:
            return Mixed(f"{where} reduces over unknown axes")
        axes = sorted(_positive(a, rank) for a in axes)
        if data.axis in axes:
            return Mixed(f"{where} reduces over {row_dim}")
        return data if attrs.get("keepdims", 1) else Rows(data.axis - sum(a < data.axis for a in axes))
    if op == "Transpose":
        perm = list(attrs.get("perm", range(rank or 0)[::-1]))
        return Rows(perm.index(data.axis))
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes") or (list(index.constant(ins[1])) if len(ins) > 1 and index.is_constant(ins[1]) else None)
        if axes is None or not rank:
            return Mixed(f"{where} has axes the graph does not fix")
        if op == "Squeeze":
            axes = [_positive(a, rank) for a in axes]
            return Mixed(f"{where} squeezes {row_dim}") if data.axis in axes else Rows(data.axis - sum(a < data.axis for a in axes))
        kept = [k for k in range(rank + len(axes)) if k not in {_positive(a, rank + len(axes)) for a in axes}]
        return Rows(kept[data.axis])
    if op == "Reshape":
        out = index.shape(node.output[0]) or ()
        if data == Rows(0) and (index.shape(ins[0]) or ())[:1] == (row_dim,) and out[:1] == (row_dim,):
            return Rows(0)
        return Mixed(f"{where} moves {row_dim} (only a reshape keeping it first is known to keep rows apart)")
    if op == "Flatten":
        return Rows(0) if data == Rows(0) and _positive(attrs.get("axis", 1), rank or 1) >= 1 else Mixed(f"{where} flattens {row_dim}")
    if op == "Concat":
        if len(set(states)) == 1 and _positive(attrs["axis"], rank) != data.axis:  # every input rows, on one axis
            return data
        return Mixed(f"{where} concatenates along {row_dim} or with values that have no rows")
    return Mixed(f"{where}: {op} is not known to keep rows apart")


def _broadcast(index: GraphIndex, ins: list[str], states: list, where: str, row_dim: str):
    """Rows of an elementwise op: every row input on the same (right-aligned) axis; no L-derived or per-request input."""
    if SHAPE in states:
        return Mixed(f"{where} reads a value derived from {row_dim} itself (a position or a length)")
    if WIDE in states:
        wide = [n for n, s in zip(ins, states) if s == WIDE]
        return Mixed(f"{where} mixes per-request values {wide} into every row")
    rank = max((_rank(index, n) or 0) for n in ins)
    axes = {rank - _rank(index, n) + s.axis for n, s in zip(ins, states) if isinstance(s, Rows) and _rank(index, n) is not None}
    if len(axes) != 1 or any(isinstance(s, Rows) and _rank(index, n) is None for n, s in zip(ins, states)):
        return Mixed(f"{where} combines rows on different axes")
    return Rows(axes.pop())


def _walk_to_keys(index: GraphIndex, state: dict, output: str):
    """From a row-local output back to its keys: (key values, {id: node} computing the rows from them, values whose
    shape the rows read)."""
    keys, nodes, shape_reads, seen, pending = [], {}, [], set(), [output]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = index.producer.get(name)
        s = state[name]
        if s == CONST:  # a weight; one computed by nodes (an int8 weight's DequantizeLinear) is computed in the row graph too
            if node is not None:
                nodes[id(node)] = node
                pending.extend(n for n in node_inputs(node) if n)
            continue
        is_key = isinstance(s, Rows) and s.axis == 0 and _rank(index, name) == 1 and np.dtype(index.dtype(name)).kind in INTEGER_KINDS
        if is_key or node is None:  # an integer per row, or an input reached without one (its raw value is the key)
            if not isinstance(s, Rows):
                raise NotRowLocal(f"history cache: {output} depends on {name}, which is not per history item")
            if _rank(index, name) != 1:
                raise NotRowLocal(f"history cache: {output} depends on {name} with {_rank(index, name)} dims per row; "
                                  "a row key is one value per row")
            keys.append(name)
            continue
        nodes[id(node)] = node
        if node.op_type in SHAPE_OPS:
            shape_reads.append(node.input[0])
            continue
        pending.extend(n for n in node_inputs(node) if n)
    return keys, nodes, shape_reads


def _ancestors(index: GraphIndex, outputs: list[str]) -> list[onnx.NodeProto]:
    """Every node the given values depend on, in graph order."""
    needed, pending = set(), list(outputs)
    while pending:
        node = index.producer.get(pending.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            pending.extend(n for n in node_inputs(node) if n)
    return [n for n in index.nodes if id(n) in needed]


def _in_graph_order(index: GraphIndex, names: set[str]) -> list[str]:
    position = {i.name: k for k, i in enumerate(index.graph.input)}
    for k, n in enumerate(index.nodes):
        for o in n.output:
            position.setdefault(o, len(index.graph.input) + k)
    return sorted(names, key=lambda n: position[n])


def _row_type(index: GraphIndex, name: str, row_dim: str) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(index.elem_type(name), [row_dim])


def _rank(index: GraphIndex, name: str) -> int | None:
    shape = index.shape(name)
    return None if shape is None else len(shape)


def _positive(axis: int, rank: int | None) -> int:
    return axis + rank if axis < 0 and rank else axis



def confirm(row_graphs: RowGraphs, encoder: onnx.ModelProto, requests: list[dict], runner) -> dict:
    """Check the postcondition numerically: on each request, the cached encoder (a tiny cache, so rows are evicted
    and recomputed between requests) equals the encoder, and each row computed alone equals the same row computed
    inside the whole history. `runner(graph)` -> an object with run(feeds) -> outputs (compiler.runtime.ort.OrtGraph).
    Returns the largest differences; raises NotRowLocal where a row differs beyond its dtype's tolerance."""
    whole, keys, rows = runner(encoder), runner(row_graphs.key_graph), runner(row_graphs.row_graph)
    budget = 64 * entry_bytes(row_graphs.bytes_per_row, len(row_graphs.keys))  # 64 rows: most requests evict
    cached = row_graphs.encoder(keys.run, rows.run, budget)
    worst: dict[str, float] = {}
    for number, request in enumerate(requests, 1):
        expected = whole.run(request)
        for got in (cached(request), _rows_one_at_a_time(row_graphs, keys, rows, request, expected)):
            for name, value in got.items():
                diff, within = deviation(value, expected[name])
                worst[name] = max(worst.get(name, 0.0), diff)
                if not within:
                    raise NotRowLocal(f"history cache: {name} assembled from cached rows differs from the encoder's by {diff:.3g} "
                                      f"on check request {number}; the graph analysis said its rows are row-local")
    return worst


TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "float64": 1e-9}  # relative to 1 + max |value|; integers exactly
TOLERANCE.update({np.dtype(t).name: 0.0 for t in (np.int8, np.uint8, np.int32, np.int64, np.bool_)})


def deviation(got: np.ndarray, expected: np.ndarray) -> tuple[float, bool]:
    """The largest difference of `got` from `expected`, and whether the two agree: the same shape, and that difference
    within the TOLERANCE of got's dtype, relative to 1 + max |expected|."""
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    scale = 1.0 + float(np.max(np.abs(expected), initial=0.0))
    return diff, got.shape == expected.shape and not diff > TOLERANCE[np.dtype(got.dtype).name] * scale


def _rows_one_at_a_time(row_graphs: RowGraphs, keys, rows, request: dict, expected: dict) -> dict:
    """A few rows of each cached output, each computed from its key alone (a batch of one), in place in the
    encoder's outputs: a row must not depend on the other rows it was computed with."""
    keyed = keys.run(request)
    length = len(keyed[row_graphs.keys[0].name])
    out = {name: expected[name].copy() for name in row_graphs.cached}
    for row in sorted({0, length // 2, length - 1}):
        alone = rows.run({k.name: keyed[k.name][row : row + 1] for k in row_graphs.keys})
        for name in row_graphs.cached:
            out[name][row] = alone[name][0]
    return out
