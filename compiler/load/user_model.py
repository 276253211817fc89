"""The user's own model: an ONNX file or a torch.export program, with its request-level inputs named.

    spec = UserModelSpec(onnx=Path("din.onnx"), request_inputs=("history_item_ids",))
    subject = load_user_model(spec, max_history=None, max_candidates=None)   # a compiler.load.subject.Subject

The model's own inputs (names, dtypes, symbolic dims) define its contract (compiler.core.contract): the named request
inputs are encoded once per request, the others are per candidate, along the candidate dim: the symbolic dim every
candidate input has and no request input has, or the one at `candidate_axis`. Every other symbolic dim of a
request input is history-like and served up to max_history; the first one at axis 0 is the history dim (the
row cache keys on its rows). The server checks values only where the user declares a range (input_ranges);
generated requests draw integers from an embedding table's rows where the input indexes one directly, else from
0..99, and floats from 0..1; with samples (JSON lines, the format `score --request` reads) requests are the
user's own, their rows repeated or cut to each verification case's sizes.
The gates' reference is the user's fp32 model itself: the ONNX file on ONNX Runtime, or the ExportedProgram in
PyTorch.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from compiler.core.artifacts import sha256_file
from compiler.core.contract import CANDIDATE, REQUEST, Contract, Input, RequestError, load_requests
from compiler.core.errors import CompilerError
from compiler.load.subject import Source, Subject
from compiler.passes.export import to_onnx
from compiler.passes.graph_index import GraphIndex, served_inputs
from compiler.passes.lint import OPSETS
from compiler.runtime.ort import OrtGraph
from compiler.stca.data import Request

DEFAULT_MAX_HISTORY, DEFAULT_MAX_CANDIDATES = 10_000, 1_024
FLOAT_SAMPLE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class UserModelSpec:
    onnx: Path | None = None  # an ONNX file
    exported: Path | None = None  # or a torch.export.save'd ExportedProgram (.pt2)
    request_inputs: tuple[str, ...] = ()  # the per-request inputs; the others are per candidate
    candidate_axis: int | None = None  # the candidate inputs' axis along candidates; None: found from the symbolic dims
    samples: Path | None = None  # requests as JSON lines: verification, calibration and warmup use them
    input_ranges: dict = field(default_factory=dict)  # name -> (lo, hi): checked by the server, drawn from by generated requests

    def __post_init__(self):
        if (self.onnx is None) == (self.exported is None):
            raise CompilerError("build: give one of --onnx MODEL.onnx or --exported PROGRAM.pt2")
        if not self.request_inputs:
            raise CompilerError("build: --request-inputs names the per-request inputs of your model (comma-separated)")
        for name, (lo, hi) in self.input_ranges.items():
            if lo > hi:
                raise CompilerError(f"--input-range {name}={lo}:{hi}: the low end is above the high end")

    @property
    def path(self) -> Path:
        return Path(self.onnx if self.onnx is not None else self.exported)


@dataclass
class UserSubject(Subject):
    graph: onnx.ModelProto  # the fp32 model as ONNX (the file, or the program exported)
    contract: Contract
    source: Source
    run_reference: object  # inputs -> the first output, in fp32
    samples: list[dict] | None = None
    tasks: tuple[str, ...] = ()
    request_source: str = ""
    model: None = None  # not an STCA module: the STCA-only features are off

    def export(self, opset: int) -> onnx.ModelProto:
        """The graph as it is: an ONNX file keeps its own opset (`opset` applied when the program was exported)."""
        return self.graph

    def reference(self, inputs: dict) -> np.ndarray:
        return np.asarray(self.run_reference(inputs))

    def requests(self, lengths, n_candidates: int, seed: int) -> list[Request]:
        contract = self.contract
        out = []
        for k, L in enumerate(lengths):
            sizes = contract.sizes(L, n_candidates)
            if self.samples:
                out.append(Request(_fit(self.samples[(seed + k) % len(self.samples)], contract, sizes)))
            else:
                out.append(Request(contract.generate(sizes, seed=seed + k)))
        return out

    def describe(self) -> str:
        c = self.contract
        return (f"{self.source.kind} model {Path(self.source.path).name}: {len(c.request_inputs)} request input(s) "
                f"{list(c.request_inputs)}, {len(c.candidate_inputs)} per candidate along {c.candidate_dim!r}, outputs "
                f"{list(c.outputs)}; requests {self.request_source}")


def load_user_model(spec: UserModelSpec, max_history: int | None = None, max_candidates: int | None = None,
                    opset: int = 18) -> UserSubject:
    path = spec.path
    if not path.is_file():
        raise CompilerError(f"build: {path}: no such file")
    source = Source("onnx" if spec.onnx is not None else "exported", str(path), sha256_file(path))
    dim_caps: dict[str, int] = {}
    if spec.onnx is not None:
        try:
            graph = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
            raise CompilerError(f"build: {path} is not an ONNX model ({type(e).__name__}: {e})") from e
        found = opset_of(graph)
        if found not in OPSETS:
            raise CompilerError(f"build: {path} is opset {found}, outside {OPSETS.start}..{OPSETS.stop - 1} (TensorRT's parser "
                                "range); export it again with opset_version in that range")
        session = OrtGraph(graph)
        run_reference = lambda inputs: session.run(inputs)[session.output_names[0]]  # noqa: E731
    else:
        graph, run_reference, dim_caps = _load_exported(path, opset)
    contract = derive_contract(graph, spec.request_inputs, spec.candidate_axis, spec.input_ranges,
                               max_history or DEFAULT_MAX_HISTORY, max_candidates or DEFAULT_MAX_CANDIDATES, dim_caps)
    samples, request_source = None, "generated from the inputs' dtypes and ranges; no --samples given"
    if spec.samples is not None:
        try:
            samples = load_requests(spec.samples, contract)
        except RequestError as e:
            raise CompilerError(f"--samples: {e}") from e
        for k, sample in enumerate(samples, start=1):
            try:
                contract.validate(sample)
            except RequestError as e:
                raise CompilerError(f"--samples: request {k}: {e}") from e
        request_source = f"from {len(samples)} sample request(s) in {spec.samples}"
    first = _dims(graph.graph.output[0])
    tasks = (contract.outputs[0],) if len(first) < 2 or first[-1] == 1 else ()  # one column: it is named after the output
    return UserSubject(graph, contract, source, run_reference, samples, tasks, request_source)


def opset_of(graph: onnx.ModelProto) -> int:
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)


def derive_contract(graph: onnx.ModelProto, request_inputs, candidate_axis: int | None, ranges: dict,
                    max_history: int, max_candidates: int, dim_caps: dict | None = None) -> Contract:
    """The contract the graph's own inputs declare (see the module docstring); a one-line CompilerError where it cannot."""
    values = served_inputs(graph.graph)
    names = [v.name for v in values]
    unknown = sorted(set(request_inputs) - set(names))
    if unknown:
        raise CompilerError(f"--request-inputs: {unknown} are not inputs of the model; its inputs are {names}")
    unranged = sorted(set(ranges) - set(names))
    if unranged:
        raise CompilerError(f"--input-range: {unranged} are not inputs of the model; its inputs are {names}")
    candidates = [n for n in names if n not in set(request_inputs)]
    if not candidates:
        raise CompilerError(f"--request-inputs: every input of the model is per request ({names}); at least one must be per candidate")
    dims = {v.name: _dims(v) for v in values}
    candidate_dim = _candidate_dim(dims, candidates, request_inputs, candidate_axis)
    history_like = [d for n in request_inputs for d in dims[n] if isinstance(d, str) and d != candidate_dim]
    history_dim = next((dims[n][0] for n in request_inputs if dims[n][:1] and dims[n][0] in history_like), None)
    caps = dim_caps or {}
    limits = {candidate_dim: min(max_candidates, caps.get(candidate_dim, max_candidates))}
    for d in dict.fromkeys(history_like):
        limits[d] = min(max_history, caps.get(d, max_history))
    for n in candidates:
        for d in dims[n]:
            if isinstance(d, str) and d not in limits:
                raise CompilerError(f"input {n!r}: dim {d!r} is neither the candidate dim {candidate_dim!r} nor a request input's; "
                                    "a candidate input may vary only along candidates")
    index = GraphIndex(graph.graph)
    inputs = []
    for v in values:
        dtype = index.dtype(v.name)
        lo, hi = ranges.get(v.name, (None, None))
        inputs.append(Input(v.name, dtype, dims[v.name], REQUEST if v.name in request_inputs else CANDIDATE,
                            low=lo, high=hi, sample_range=_sample_range(index, v.name, dtype)))
    output_dims = _dims(graph.graph.output[0])
    axis = output_dims.index(candidate_dim) if candidate_dim in output_dims else None
    return Contract(tuple(inputs), tuple(o.name for o in graph.graph.output), limits, {}, candidate_dim, history_dim, axis)


def _candidate_dim(dims: dict, candidates: list[str], request_inputs, axis: int | None) -> str:
    if axis is not None:
        found = {dims[n][axis] if -len(dims[n]) <= axis < len(dims[n]) else None for n in candidates}
        if len(found) != 1 or not isinstance(next(iter(found)), str):
            raise CompilerError(f"--candidate-axis {axis}: the candidate inputs {candidates} do not share one symbolic dim there "
                                f"({ {n: list(dims[n]) for n in candidates} })")
        return next(iter(found))
    request_dims = {d for n in request_inputs for d in dims[n]}
    shared = [d for d in dims[candidates[0]] if isinstance(d, str) and d not in request_dims and all(d in dims[n] for n in candidates)]
    if len(shared) != 1:
        raise CompilerError(f"the candidate dim is not clear from the symbolic dims of {candidates} "
                            f"({ {n: list(dims[n]) for n in candidates} }); give --candidate-axis")
    return shared[0]


def _dims(value: onnx.ValueInfoProto) -> tuple:
    """Symbolic names, fixed sizes, and a made-up name for an unnamed dynamic dim (its own symbol)."""
    shape = value.type.tensor_type.shape.dim
    return tuple(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else f"{value.name}_dim{k}")
                 for k, d in enumerate(shape))


def _sample_range(index: GraphIndex, name: str, dtype: str) -> tuple | None:
    """Where generated values of an input come from: the rows of an embedding table it indexes directly, else a default."""
    if np.dtype(dtype).kind == "f":
        return FLOAT_SAMPLE_RANGE
    for node in index.consumers.get(name, []):
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and node.input[1] == name and axis == 0 and index.is_constant(node.input[0]):
            rows = index.shape(node.input[0])
            if rows and isinstance(rows[0], int):
                return (0, rows[0] - 1)
    return None


def _fit(sample: dict, contract: Contract, sizes: dict) -> dict:
    """A sample with its rows along each symbolic dim repeated or cut (keeping the last ones) to `sizes`."""
    fitted = {}
    for spec in contract.inputs:
        value = sample[spec.name]
        for axis, dim in enumerate(spec.dims):
            n = value.shape[axis]
            if isinstance(dim, str) and dim in sizes and n != sizes[dim]:
                value = np.take(value, (np.arange(sizes[dim]) + max(n - sizes[dim], 0)) % n, axis=axis)
        fitted[spec.name] = value
    return fitted


def _load_exported(path: Path, opset: int):
    """The program exported to ONNX the way compiler.passes.export exports STCA; its reference; its dims' declared maxima."""
    import torch


    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001  (a zip that is not a program, a version mismatch)
        raise CompilerError(f"build: {path} is not a torch.export program ({type(e).__name__}: {e})") from e
    graph = to_onnx(program, opset=opset)
    module = program.module()
    names = [i.name for i in served_inputs(graph.graph)]

    def run_reference(inputs: dict) -> np.ndarray:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.array(inputs[n])) for n in names])
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    caps = {}
    for symbol, bounds in program.range_constraints.items():
        try:
            caps[str(symbol)] = int(bounds.upper)
        except (TypeError, OverflowError):  # unbounded
            pass
    return graph, run_reference, caps
