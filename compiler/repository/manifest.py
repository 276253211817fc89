"""manifest.json: a build's record of itself (BuildRecord), written by build and updated by tune through this module.

    write(repo, record)          read(repo) == record          is_build(directory)

The record is typed end to end; its JSON keeps the names readers outside Python rely on (`verification.passed`,
`cut`, `thread_budget`, `files`), plus derived numbers for them (bytes per request at the served maximum).
"""

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from compiler.core.artifacts import MANIFEST, hash_tree
from compiler.core.contract import Contract
from compiler.core.errors import CompilerError
from compiler.core.machine import Machine
from compiler.load.subject import Source
from compiler.passes.row_locality import RowLocality
from compiler.passes.lint import LintReport
from compiler.passes.partition import Cut, CutTensor, SharedWeight
from compiler.precision.int8_fallback import KeptLayer, Layer
from compiler.repository.budget import ThreadBudget
from compiler.stca.model import STCAConfig
from compiler.verify.gates import Verification

BUILD_FORMAT, BUILD_VERSION = "stca-build", 1


@dataclass(frozen=True)
class PrecisionRecord:
    """What the precision stage did to each half and the cut. The per-graph entries are the conversion tool's own
    account (compiler.precision.convert: tool, counts, the nodes kept in float and why)."""

    conversions: dict[str, dict]  # "encoder" | "scorer" | "fused" -> that graph's conversion
    calibration: dict | None = None  # int8: the calibration set's path, count, sha256
    cut: dict | None = None  # fp16 cut: which tensors cross narrowed and which stay fp32, why
    int8_form: str | None = None  # int8: "cpu" | "tensorrt"
    int8_kept_float: tuple[KeptLayer, ...] = ()  # int8: the layers kept in float so the gates pass

    def to_dict(self) -> dict:
        int8 = {"int8_form": self.int8_form, "int8_kept_float": [k.to_dict() for k in self.int8_kept_float]} if self.int8_form else {}
        return {**self.conversions, **({"calibration": self.calibration} if self.calibration else {}),
                **({"cut": self.cut} if self.cut else {}), **int8}

    @classmethod
    def of(cls, details: dict, int8_form: str | None = None, kept: tuple[KeptLayer, ...] = ()) -> "PrecisionRecord":
        """The record of the precision stage's details (compiler.precision.convert.Halves.details: one entry per graph,
        and the calibration set's and the cut's where there are)."""
        conversions = {k: v for k, v in details.items() if k not in ("calibration", "cut")}
        return cls(conversions, details.get("calibration"), details.get("cut"), int8_form, tuple(kept))

    @classmethod
    def from_dict(cls, d: dict) -> "PrecisionRecord":
        kept = tuple(KeptLayer(Layer(k["half"], k["node"], k["tau_deficit"], k["weight_share"]), k["why"]) for k in d.get("int8_kept_float", ()))
        details = {k: v for k, v in d.items() if k not in ("int8_form", "int8_kept_float")}
        return cls.of(details, d.get("int8_form"), kept)


@dataclass(frozen=True, kw_only=True)
class BuildRecord:
    """Everything a build records about itself; manifest.json is this, and read() gives it back."""

    created: str
    build_seconds: float
    source: Source
    model_config: STCAConfig | None  # None: the user's own model
    contract: Contract
    target: str  # python | onnxruntime | tensorrt
    opset: int
    precision: str  # the less precise half's
    half_precisions: tuple[str, str]  # (encoder, scorer)
    precisions: PrecisionRecord
    cut: Cut  # the tensors crossing the split, in the dtypes they are served in, and why each node sits where it does
    verification: Verification
    lint: tuple[LintReport, ...]
    history_cache: RowLocality
    thread_budget: ThreadBudget | None  # CPU targets
    engines: dict | None  # tensorrt: TensorRT's version, the GPU, the profiles and the plans' own verification
    accepted_accuracy_loss: bool
    machine: Machine
    versions: dict[str, str]
    plots: dict[str, str] = field(default_factory=dict)  # name -> file in the repository
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of every file of the build but manifest.json

    def to_dict(self) -> dict:
        contract = self.contract
        return {
            "format": BUILD_FORMAT, "version": BUILD_VERSION, "created": self.created, "build_seconds": self.build_seconds,
            "precision": self.precision, "half_precisions": list(self.half_precisions), "precisions": self.precisions.to_dict(),
            "target": self.target,
            **({"model_config": self.model_config.to_dict()} if self.model_config is not None else {}),
            "source": self.source.to_dict(), "versions": self.versions, "machine": self.machine.to_dict(),
            "export": {"opset": self.opset, "dynamic_dims": {dim: [1, size] for dim, size in contract.limits.items()}},
            "contract": contract.to_dict(),
            **cut_entries(self.cut, contract),
            "placement": dict(self.cut.placement),
            "request_inputs": list(self.cut.request_inputs), "candidate_inputs": list(self.cut.candidate_inputs),
            "verification": self.verification.to_dict(),
            "history_cache": self.history_cache.to_dict(),
            "accepted_accuracy_loss": self.accepted_accuracy_loss,
            **({"thread_budget": self.thread_budget.to_dict()} if self.thread_budget else {}),
            "lint": [r.to_dict() for r in self.lint],
            **({"engines": self.engines} if self.engines else {}),
            "plots": self.plots, "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BuildRecord":
        if d.get("format") != BUILD_FORMAT or d.get("version") != BUILD_VERSION:
            raise ValueError(f"not a {BUILD_FORMAT} v{BUILD_VERSION} manifest (format {d.get('format')!r}, version {d.get('version')!r})")
        cut = Cut(tuple(CutTensor(t["name"], t["source"], t["dtype"], tuple(t["shape"])) for t in d["cut"]),
                  tuple(SharedWeight(w["name"], w["bytes"]) for w in d["shared_weights"]), d["placement"],
                  tuple(d["request_inputs"]), tuple(d["candidate_inputs"]))
        return cls(
            created=d["created"], build_seconds=d["build_seconds"], source=Source.from_dict(d["source"]),
            model_config=STCAConfig.from_dict(d["model_config"]) if "model_config" in d else None,
            contract=Contract.from_dict(d["contract"]), target=d["target"], opset=d["export"]["opset"],
            precision=d["precision"], half_precisions=tuple(d["half_precisions"]),
            precisions=PrecisionRecord.from_dict(d["precisions"]), cut=cut,
            verification=Verification.from_dict(d["verification"]), lint=tuple(LintReport.from_dict(r) for r in d["lint"]),
            history_cache=RowLocality.from_dict(d["history_cache"]),
            thread_budget=ThreadBudget.from_dict(d["thread_budget"]) if "thread_budget" in d else None,
            engines=d.get("engines"), accepted_accuracy_loss=d["accepted_accuracy_loss"],
            machine=Machine.from_dict(d["machine"]), versions=d["versions"], plots=d["plots"], files=d["files"],
        )


def write(repo: Path, record: BuildRecord) -> None:
    """manifest.json of `record` in `repo`."""
    (Path(repo) / MANIFEST).write_text(json.dumps(record.to_dict(), indent=2) + "\n")


def read(repo: Path) -> BuildRecord:
    """The BuildRecord a repository's manifest.json holds; CompilerError where there is none or it is not one."""
    try:
        return BuildRecord.from_dict(json.loads((Path(repo) / MANIFEST).read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CompilerError(f"{repo} is not a built repository ({MANIFEST}: {type(e).__name__}: {e})") from e


def with_files(record: BuildRecord, repo: Path) -> BuildRecord:
    """`record` listing the sha256 of every file now in `repo` but manifest.json."""
    return replace(record, files={name: digest for name, digest in hash_tree(repo).items() if name != MANIFEST})


def is_build(directory: Path) -> bool:
    """An earlier build: its manifest says so and every file in it is one the manifest lists."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != BUILD_FORMAT:
        return False
    ours = set(manifest.get("files", {})) | {MANIFEST}
    return all(
        str(p.relative_to(directory)) in ours
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts  # bytecode an older server wrote beside model.py
    )


def cut_entries(cut: Cut, contract: Contract) -> dict:
    """The manifest's view of a Cut: each crossing tensor with its bytes per request at the served maximum dims."""
    return {
        "cut": [
            {"name": t.name, "source": t.source, "dtype": t.dtype, "shape": list(t.shape),
             "bytes_per_request": t.bytes_per_request(contract.limits)}
            for t in cut.tensors
        ],
        "cut_bytes_per_request": cut.bytes_per_request(contract.limits),
        "cut_at_history_length": contract.max_history,
        "shared_weights": [{"name": w.name, "bytes": w.bytes} for w in cut.shared_weights],
    }
