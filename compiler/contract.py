"""The request contract, declared once: every input's name, dtype, dims and level, the limits a model is built
for, one validator, and the request file format.

The model's forward signature, the export's dynamic axes, the partition's request-level inputs, the synthetic
requests, the Triton configs, the client and the benchmark all derive from INPUTS here. The same checks run
in the client (before anything is sent), in the Triton models (so a bad request gets a named error and the
server keeps serving), and on calibration sets. Only numpy: the file is copied next to the Python-backend
models as stca_contract.py, which must not need torch or onnx.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REQUEST, CANDIDATE = "request", "candidate"  # encoded once per request | one row per candidate


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[str, ...]  # "L" history length, "N" candidates (both per request); "K", "F" the model's field counts
    level: str  # REQUEST or CANDIDATE: which half of the split reads it
    meaning: str

    @property
    def per_history_item(self) -> bool:
        """One row per history item (axis 0 is L): padding extends it, and a history cache keys on its rows."""
        return self.dims[:1] == ("L",)


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
CANDIDATE_INPUTS = tuple(i.name for i in INPUTS if i.level == CANDIDATE)
HISTORY_INPUTS = tuple(i.name for i in INPUTS if i.per_history_item)
OUTPUT_NAMES = ("scores",)  # (N, T) float32: one probability per candidate and task
PAD_ITEM_ID = 0  # a history item with this id is padding: it gets no attention
# Every input is an id, an action or an age, so no value is ever negative (ids are hashed in-graph, not bounded).
MIN_VALUE = 0


class RequestError(ValueError):
    """A request that breaks the contract; the message names the input, the value and the limit."""


@dataclass(frozen=True)
class RequestLimits:
    max_history: int
    max_candidates: int
    n_user_fields: int
    n_candidate_fields: int
    n_actions: int | None = None  # history_actions < n_actions (None: a repository built before the check)

    @classmethod
    def of(cls, config) -> "RequestLimits":
        """The limits a model config (compiler.model.STCAConfig) is built for."""
        return cls(config.max_history, config.max_candidates, config.n_user_fields, config.n_candidate_fields, config.n_actions)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, inputs: dict, names=None) -> tuple[int, int]:
        """Check the named inputs (all of them by default); return (L, N) where known (else 0)."""
        names = list(INPUT_NAMES) if names is None else list(names)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise RequestError(f"missing input(s) {missing}; a request has {list(INPUT_NAMES)}")
        fixed = {"K": self.n_user_fields, "F": self.n_candidate_fields}
        sizes: dict[str, tuple[int, str]] = {}
        for name in names:
            value = inputs[name]
            dtype, dims = SPECS[name].dtype, SPECS[name].dims
            if not isinstance(value, np.ndarray):
                raise RequestError(f"{name}: expected a numpy array, got {type(value).__name__}")
            if value.dtype != np.dtype(dtype):
                raise RequestError(f"{name}: dtype {value.dtype} is not {dtype}")
            if value.ndim != len(dims):
                raise RequestError(f"{name}: rank {value.ndim} (shape {list(value.shape)}) is not {len(dims)} ({list(dims)})")
            for axis, (dim, size) in enumerate(zip(dims, value.shape)):
                if dim in fixed and size != fixed[dim]:
                    raise RequestError(f"{name}: dim {axis} is {size}, the model has {dim} = {fixed[dim]}")
                if dim in sizes and sizes[dim][0] != size:
                    raise RequestError(f"{name}: length {size} does not match {sizes[dim][1]} length {sizes[dim][0]} ({dim})")
                sizes.setdefault(dim, (size, name))
        L = sizes.get("L", (0, ""))[0]
        N = sizes.get("N", (0, ""))[0]
        if "L" in sizes and not 1 <= L <= self.max_history:
            raise RequestError(f"{sizes['L'][1]}: history length {L} is outside 1..{self.max_history} (the built maximum)")
        if "N" in sizes and not 1 <= N <= self.max_candidates:
            raise RequestError(f"{sizes['N'][1]}: {N} candidates is outside 1..{self.max_candidates} (the built maximum)")
        for name in names:
            value = inputs[name]
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RequestError(f"{name}: {int((~np.isfinite(value)).sum())} value(s) are NaN or infinite")
            if value.size and value.min() < MIN_VALUE:
                raise RequestError(f"{name}: value {value.min()} is negative; ids, actions and ages must be >= {MIN_VALUE}")
        if "history_actions" in names and self.n_actions is not None and inputs["history_actions"].size:
            if inputs["history_actions"].max() >= self.n_actions:
                raise RequestError(f"history_actions: action {inputs['history_actions'].max()} is outside 0..{self.n_actions - 1} "
                                   f"(the model has {self.n_actions} action types)")
        if "history_item_ids" in names and (inputs["history_item_ids"] == PAD_ITEM_ID).all():
            raise RequestError(f"history_item_ids: every item is padding (id {PAD_ITEM_ID}); send at least one real item")
        return L, N


def save_request(path: Path, inputs: dict) -> None:
    """A request as JSON: {input name: nested list}; the format `python -m compiler score --request` reads."""
    Path(path).write_text(json.dumps({k: np.asarray(v).tolist() for k, v in inputs.items()}))


def load_request(path: Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RequestError(f"request file {path}: cannot read it as JSON ({e})") from e
    unknown = sorted(set(raw) - set(SPECS))
    if unknown:
        raise RequestError(f"request file {path}: unknown input(s) {unknown}; expected {list(INPUT_NAMES)}")
    inputs = {}
    for name, value in raw.items():
        try:
            inputs[name] = np.asarray(value, dtype=SPECS[name].dtype)
        except (TypeError, ValueError) as e:
            raise RequestError(f"request file {path}: {name} is not a {SPECS[name].dtype} array ({e})") from e
    return inputs
