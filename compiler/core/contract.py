"""The request contract: every input's name, dtype, dims and level, the limits a model is built for, one
validator, and the request file format.

A Contract is a value: STCA's is declared here once (INPUTS, stca_contract), a user's model gets one derived
from its own graph (compiler.load.user_model). Everything downstream derives from the Contract a build holds: the
partition's request-level inputs, the Triton configs (which carry it as JSON), the client, the served models'
checks, calibration sets and generated requests. The same checks run in the client (before anything is sent),
in the Triton models (so a bad request gets a named error and the server keeps serving), and on calibration
sets. Only numpy: the file is copied next to the Python-backend models as stca_contract.py, which must not need
torch or onnx.
"""

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

REQUEST, CANDIDATE = "request", "candidate"  # encoded once per request | one row per candidate


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple  # symbolic dim names ("L", "N", ...) or fixed sizes (ints)
    level: str  # REQUEST or CANDIDATE: which half of the split reads it
    meaning: str = ""
    low: float | None = None  # smallest valid value: the server refuses a request below it
    high: float | None = None  # largest valid value
    padding: int | None = None  # the value that marks a padding row; a request that is all padding is refused
    sample_range: tuple | None = None  # (lo, hi) generated requests draw from where no low/high is declared

    def generated_range(self) -> tuple[float, float]:
        """The inclusive range generated values of this input take: the declared one, else sample_range, else 0..99."""
        lo, hi = self.sample_range or (0, 99)
        return (lo if self.low is None else self.low), (hi if self.high is None else self.high)


# STCA's inputs, in its forward order. "L" history length, "N" candidates (both per request); "K", "F" the model's
# field counts (stca_contract fixes them from the config).
INPUTS = (
    Input("history_item_ids", "int64", ("L",), REQUEST, "raw item ids, most recent last; 0 = padding"),
    Input("history_actions", "int64", ("L",), REQUEST, "what the user did with each item"),
    Input("history_age_s", "float32", ("L",), REQUEST, "seconds since each interaction"),
    Input("user_features", "int64", ("K",), REQUEST, "user profile ids, one per field"),
    Input("candidate_item_ids", "int64", ("N",), CANDIDATE, "raw item ids to score"),
    Input("candidate_features", "int64", ("N", "F"), CANDIDATE, "candidate ids, one per field"),
)
SPECS = {i.name: i for i in INPUTS}
INPUT_NAMES = tuple(SPECS)  # the model's forward order
REQUEST_INPUTS = frozenset(i.name for i in INPUTS if i.level == REQUEST)
OUTPUT_NAMES = ("scores",)  # (N, T) float32: one probability per candidate and task
PAD_ITEM_ID = 0  # a history item with this id is padding: it gets no attention
CONTRACT_PARAMETER = "request_contract"  # every served config carries its Contract as JSON under this parameter


class RequestError(ValueError):
    """A request that breaks the contract; the message names the input, the value and the limit."""


@dataclass(frozen=True)
class Contract:
    inputs: tuple[Input, ...]  # in the model's input order
    outputs: tuple[str, ...]
    limits: dict = field(default_factory=dict)  # symbolic dim -> the largest size served (each dim is at least 1)
    fixed: dict = field(default_factory=dict)  # named dim -> the one size the model has
    candidate_dim: str = "N"  # the dim of one row per candidate
    history_dim: str | None = "L"  # the dim of one row per history item, where the model has one
    output_candidate_axis: int | None = 0  # the first output's axis along candidates (None: it has none to rank)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def specs(self) -> dict[str, Input]:
        return {i.name: i for i in self.inputs}

    @property
    def request_inputs(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.level == REQUEST)

    @property
    def candidate_inputs(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.level == CANDIDATE)

    @property
    def history_inputs(self) -> tuple[str, ...]:
        """Inputs with one row per history item (axis 0): padding extends them, and a history cache keys on their rows."""
        return tuple(i.name for i in self.inputs if self.history_dim is not None and i.dims[:1] == (self.history_dim,))

    @property
    def user_inputs(self) -> tuple[str, ...]:
        """The request-level inputs that say who the user is: those without a row per history item (STCA's user_features),
        which stay the same from one of a user's visits to the next while the history grows and ages. A router keys on
        them (compiler.serving.routing)."""
        return tuple(name for name in self.request_inputs if name not in self.history_inputs)

    @property
    def max_history(self) -> int:
        return self.limits.get(self.history_dim, 0) if self.history_dim else 0

    @property
    def max_candidates(self) -> int:
        return self.limits[self.candidate_dim]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Contract":
        inputs = tuple(Input(**{**i, "dims": tuple(i["dims"]), "sample_range": tuple(i["sample_range"]) if i.get("sample_range") else None})
                       for i in d["inputs"])
        return cls(inputs, tuple(d["outputs"]), dict(d["limits"]), dict(d["fixed"]), d["candidate_dim"], d["history_dim"],
                   d["output_candidate_axis"])

    def sizes(self, history: int, candidates: int) -> dict[str, int]:
        """The symbolic dims of a request with `history` items and `candidates` candidates, each within its served limit
        (every dim other than the candidate dim is history-like)."""
        return {dim: min(candidates if dim == self.candidate_dim else int(history), size) for dim, size in self.limits.items()}

    def describe(self, dim: str, size: int) -> str:
        if dim == self.history_dim:
            return f"history length {size}"
        if dim == self.candidate_dim:
            return f"{size} candidates"
        return f"{dim} = {size}"

    def validate(self, inputs: dict, names=None) -> dict[str, int]:
        """Check the named inputs (all of them by default); return the size of each symbolic dim they have."""
        specs = self.specs
        names = list(self.names) if names is None else list(names)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise RequestError(f"missing input(s) {missing}; a request has {list(self.names)}")
        sizes: dict[str, tuple[int, str]] = {}
        for name in names:
            value, spec = inputs[name], specs[name]
            if not isinstance(value, np.ndarray):
                raise RequestError(f"{name}: expected a numpy array, got {type(value).__name__}")
            if value.dtype != np.dtype(spec.dtype):
                raise RequestError(f"{name}: dtype {value.dtype} is not {spec.dtype}")
            if value.ndim != len(spec.dims):
                raise RequestError(f"{name}: rank {value.ndim} (shape {list(value.shape)}) is not {len(spec.dims)} ({list(spec.dims)})")
            for axis, (dim, size) in enumerate(zip(spec.dims, value.shape)):
                exact = dim if isinstance(dim, int) else self.fixed.get(dim)
                if exact is not None:
                    if size != exact:
                        raise RequestError(f"{name}: dim {axis} is {size}, the model has {dim if isinstance(dim, int) else f'{dim} = {exact}'}")
                    continue
                if dim in sizes and sizes[dim][0] != size:
                    raise RequestError(f"{name}: length {size} does not match {sizes[dim][1]} length {sizes[dim][0]} ({dim})")
                sizes.setdefault(dim, (size, name))
        for dim, (size, name) in sizes.items():
            if dim in self.limits and not 1 <= size <= self.limits[dim]:
                raise RequestError(f"{name}: {self.describe(dim, size)} is outside 1..{self.limits[dim]} (the built maximum)")
        for name in names:
            value, spec = inputs[name], specs[name]
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RequestError(f"{name}: {int((~np.isfinite(value)).sum())} value(s) are NaN or infinite")
            if not value.size:
                continue
            if spec.low is not None and value.min() < spec.low:
                raise RequestError(f"{name}: value {value.min()} is " + ("negative" if spec.low == 0 else f"below {spec.low}")
                                   + f"; {name} must be {_range(spec)}")
            if spec.high is not None and value.max() > spec.high:
                raise RequestError(f"{name}: value {value.max()} is " + (f"outside {_range(spec)}" if spec.low is not None else f"above {spec.high:g}")
                                   + (f" ({spec.meaning})" if spec.meaning else ""))
            if spec.padding is not None and (value == spec.padding).all():
                raise RequestError(f"{name}: every item is padding (value {spec.padding}); send at least one real item")
        return {dim: size for dim, (size, _) in sizes.items()}

    def left_pad(self, inputs: dict, n: int) -> dict:
        """The same request with n padding rows before its oldest history item (each input's padding value, else 0)."""
        padded, specs = dict(inputs), self.specs
        for name in self.history_inputs:
            value, pad = inputs[name], specs[name].padding or 0
            padded[name] = np.concatenate([np.full((n, *value.shape[1:]), pad, value.dtype), value])
        return padded

    def generate(self, sizes: dict[str, int], seed: int = 0) -> dict:
        """A random request with the given symbolic dim sizes, each input drawn uniformly from its generated range."""
        rng = np.random.default_rng(seed)
        request = {}
        for spec in self.inputs:
            shape = [d if isinstance(d, int) else self.fixed.get(d, sizes.get(d, 1)) for d in spec.dims]
            lo, hi = spec.generated_range()
            if np.dtype(spec.dtype).kind in "iu":
                value = rng.integers(int(lo), int(hi) + 1, size=shape)
            elif np.dtype(spec.dtype).kind == "b":
                value = rng.random(shape) < 0.5
            else:
                value = rng.uniform(lo, hi, size=shape)
            request[spec.name] = value.astype(spec.dtype)
        return request


def _range(spec: Input) -> str:
    if spec.high is None:
        return f">= {spec.low:g}"
    return f"{spec.low:g}..{spec.high:g}" if spec.low is not None else f"<= {spec.high:g}"


def stca_contract(config) -> Contract:
    """STCA's contract for a model config (compiler.stca.model.STCAConfig): every input is an id, an action or an age, so
    no value is negative (ids are hashed in-graph, not bounded); actions are a closed set; id 0 is padding."""
    rules = {"history_item_ids": dict(padding=PAD_ITEM_ID), "history_actions": dict(high=config.n_actions - 1, meaning=f"the model has {config.n_actions} action types")}
    inputs = tuple(replace(i, low=0, **rules.get(i.name, {})) for i in INPUTS)
    return Contract(inputs, OUTPUT_NAMES, {"L": config.max_history, "N": config.max_candidates},
                    {"K": config.n_user_fields, "F": config.n_candidate_fields})


def save_request(path: Path, inputs: dict) -> None:
    """A request as JSON: {input name: nested list}; the format `python -m compiler score --request` reads."""
    Path(path).write_text(json.dumps({k: np.asarray(v).tolist() for k, v in inputs.items()}))


def load_request(path: Path, contract: Contract | None = None) -> dict:
    """A request file's inputs with the dtypes `contract` declares (STCA's by default)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RequestError(f"request file {path}: cannot read it as JSON ({e})") from e
    return _parse(raw, contract, f"request file {path}")


def read_requests(path: Path, contract: Contract) -> Iterator[dict]:
    """Requests as JSON lines: one {input name: nested list} object per line (blank lines skipped), parsed one at a
    time, so a calibration file may hold more long requests than memory does."""
    try:
        with Path(path).open() as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RequestError(f"requests file {path} line {number}: not JSON ({e})") from e
                yield _parse(raw, contract, f"requests file {path} line {number}")
    except OSError as e:
        raise RequestError(f"requests file {path}: cannot read it ({e})") from e


def load_requests(path: Path, contract: Contract) -> list[dict]:
    """read_requests' requests, all of them; a file without one is refused."""
    requests = list(read_requests(path, contract))
    if not requests:
        raise RequestError(f"requests file {path}: holds no requests (one JSON object per line)")
    return requests


def _parse(raw, contract: Contract | None, where: str) -> dict:
    specs = contract.specs if contract is not None else SPECS
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: expected an object {{input name: list}}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise RequestError(f"{where}: unknown input(s) {unknown}; expected {list(specs)}")
    inputs = {}
    for name, value in raw.items():
        try:
            inputs[name] = np.asarray(value, dtype=specs[name].dtype)
        except (TypeError, ValueError) as e:
            raise RequestError(f"{where}: {name} is not a {specs[name].dtype} array ({e})") from e
    return inputs
