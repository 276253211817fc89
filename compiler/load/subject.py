"""What a build compiles: a model as the gates' fp32 reference, its request contract, and requests to check it on.

    StcaSubject(model, source)                  this package's STCA class (a checkpoint, the demo model, a preset)
    compiler.load.user_model.load_user_model(spec)   the user's own model: an ONNX file or a torch.export program

build(), verify and the stages after export ask a subject only these questions, so both kinds go through the
same partition, precision, verification, history-cache analysis and emit. STCA-only features (the attention
form, the cost model, the PyTorch-eager baseline, labelled requests for the AUC gate) hang off StcaSubject.model.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from compiler.core.contract import Contract, stca_contract
from compiler.passes.export import export
from compiler.stca.data import Request, World, kuairand_lengths, sample_requests
from compiler.stca.model import STCA


@dataclass(frozen=True)
class AttentionChoice:
    """Where STCA's attention form was left to the cost model (--attention auto): what it chose, at what load, why."""

    chosen: str  # "kv" | "reordered"
    history: int
    candidates: int
    target: str
    cut_precision: str
    flops: dict[str, float]  # form -> FLOPs per request
    flops_with_cut_priced: dict[str, float]  # form -> FLOPs plus the cut's bytes priced as FLOPs on the target
    hit_rate: float = 0.0  # the history row cache's share of the rows it was priced at (the encoder computes the rest)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """Where the compiled model came from."""

    kind: str  # "demo" | "checkpoint" | "seeded" | "onnx" | "exported"
    path: str | None = None  # the checkpoint directory or the user's file (None for a seeded preset)
    sha256: str | None = None  # of the weights file, or of the user's file
    preset: str | None = None  # "seeded": the preset's name
    attention_choice: AttentionChoice | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Source":
        choice = d.get("attention_choice")
        return cls(d["kind"], d.get("path"), d.get("sha256"), d.get("preset"), AttentionChoice(**choice) if choice else None)


class Subject:
    """The interface (see the module docstring). `reference` returns the model's first output on one request."""

    contract: Contract
    tasks: tuple[str, ...]  # the columns of the first output, where they have names
    source: Source  # where the model came from, for the manifest
    model: STCA | None  # this package's STCA module, where that is what is compiled
    request_source: str  # where requests() come from, for the log and the report

    def export(self, opset: int) -> onnx.ModelProto:
        raise NotImplementedError

    def cut_names(self) -> dict[str, str]:
        """Module path -> the name a crossing tensor it produces takes (compiler.passes.partition); {} keeps graph names."""
        return {}

    def reference(self, inputs: dict) -> np.ndarray:
        raise NotImplementedError

    def requests(self, lengths, n_candidates: int, seed: int) -> list[Request]:
        """One request per history length (every length is 1 where the model has no history dim)."""
        raise NotImplementedError

    def labelled_requests(self, count: int, seed: int) -> list[Request]:
        """Requests with known labels for the AUC gate; none where the subject has no labels."""
        return []

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class StcaSubject(Subject):
    model: STCA
    source: Source
    world: World = field(default_factory=World)

    @property
    def contract(self) -> Contract:
        return stca_contract(self.model.config)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.config.tasks

    @property
    def request_source(self) -> str:
        return "synthetic requests with planted labels (compiler.stca.data)"

    def export(self, opset: int) -> onnx.ModelProto:
        return export(self.model, opset).model

    def cut_names(self) -> dict[str, str]:
        return self.model.cut_tensor_names()

    def reference(self, inputs: dict) -> np.ndarray:
        return self.model.score(inputs)

    def requests(self, lengths, n_candidates: int, seed: int) -> list[Request]:
        return list(sample_requests(self.model.config, lengths, seed=seed, n_candidates=n_candidates, world=self.world))

    def labelled_requests(self, count: int, seed: int) -> list[Request]:
        c = self.model.config
        lengths = kuairand_lengths(count, c.max_history, seed=seed - 1)
        return self.requests(lengths, min(128, c.max_candidates), seed - 2)

    def describe(self) -> str:
        c = self.model.config
        return f"{self.source.kind} STCA model, D={c.d_model}, h={c.n_heads}, M={c.n_layers}, attention={c.attention}"
