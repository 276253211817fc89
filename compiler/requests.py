"""The request contract: input names, dtypes, ranks and limits, and one validator for every side.

The same checks run in the client (before anything is sent), in the Triton history encoder and scorer
(so a bad request gets a named error and the server keeps serving), and in verify. Only numpy here:
the file is copied next to the Python-backend models, which must not need torch.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# name -> (dtype, dims); "L" and "N" are the request's history length and candidate count,
# "K" and "F" the model's user and candidate field counts.
INPUTS = {
    "history_item_ids": ("int64", ("L",)),
    "history_actions": ("int64", ("L",)),
    "history_age_s": ("float32", ("L",)),
    "user_features": ("int64", ("K",)),
    "candidate_item_ids": ("int64", ("N",)),
    "candidate_features": ("int64", ("N", "F")),
}
NON_NEGATIVE = ("history_item_ids", "history_actions", "history_age_s", "user_features", "candidate_item_ids", "candidate_features")


class RequestError(ValueError):
    """A request that breaks the contract; the message names the input, the value and the limit."""


@dataclass(frozen=True)
class RequestLimits:
    max_history: int
    max_candidates: int
    n_user_fields: int
    n_candidate_fields: int

    @classmethod
    def of(cls, config) -> "RequestLimits":
        """The limits a model config (compiler.model.STCAConfig) is built for."""
        return cls(config.max_history, config.max_candidates, config.n_user_fields, config.n_candidate_fields)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, inputs: dict, names=None) -> tuple[int, int]:
        """Check the named inputs (all of them by default); return (L, N) where known (else 0)."""
        names = list(INPUTS) if names is None else list(names)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise RequestError(f"missing input(s) {missing}; a request has {list(INPUTS)}")
        fixed = {"K": self.n_user_fields, "F": self.n_candidate_fields}
        sizes: dict[str, tuple[int, str]] = {}
        for name in names:
            value = inputs[name]
            dtype, dims = INPUTS[name]
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
            if name in NON_NEGATIVE and value.size and value.min() < 0:
                raise RequestError(f"{name}: value {value.min()} is negative; ids, actions and ages must be >= 0")
        if "history_item_ids" in names and not inputs["history_item_ids"].any():
            raise RequestError("history_item_ids: every item is padding (id 0); send at least one real item")
        return L, N


def save_request(path: Path, inputs: dict) -> None:
    """A request as JSON: {input name: nested list}; the format `python -m compiler score --request` reads."""
    Path(path).write_text(json.dumps({k: np.asarray(v).tolist() for k, v in inputs.items()}))


def load_request(path: Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RequestError(f"request file {path}: cannot read it as JSON ({e})") from e
    unknown = sorted(set(raw) - set(INPUTS))
    if unknown:
        raise RequestError(f"request file {path}: unknown input(s) {unknown}; expected {list(INPUTS)}")
    inputs = {}
    for name, value in raw.items():
        try:
            inputs[name] = np.asarray(value, dtype=INPUTS[name][0])
        except (TypeError, ValueError) as e:
            raise RequestError(f"request file {path}: {name} is not a {INPUTS[name][0]} array ({e})") from e
    return inputs
