"""Precision stage: the fp32 halves -> the halves in the precision each is served at.

TensorRT 11 is strongly typed, so precision is decided here, in the ONNX graphs, and the very graphs
that verify runs on ONNX Runtime are the ones the engines are built from.
"""

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from compiler.errors import CompilerError
from compiler.model import STCA
from compiler.partition import Split

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PrecisionConfig:
    precision: str = "fp32"  # both halves, unless overridden below
    encoder: str | None = None
    scorer: str | None = None
    calibration: Path | None = None  # int8: a calibration set (python -m compiler calibrate)

    def __post_init__(self):
        for name, value in (("precision", self.precision), ("encoder precision", self.encoder), ("scorer precision", self.scorer)):
            if value is not None and value not in PRECISIONS:
                raise CompilerError(f"{name}: {value!r} is not one of {PRECISIONS}")

    @property
    def encoder_precision(self) -> str:
        return self.encoder or self.precision

    @property
    def scorer_precision(self) -> str:
        return self.scorer or self.precision


@dataclass(frozen=True)
class Halves:
    encoder: onnx.ModelProto
    scorer: onnx.ModelProto
    encoder_precision: str
    scorer_precision: str
    details: dict = field(default_factory=dict)  # what the conversion did, for the manifest


def convert(parts: Split, model: STCA, cfg: PrecisionConfig) -> Halves:
    for half, p in (("encoder", cfg.encoder_precision), ("scorer", cfg.scorer_precision)):
        if p != "fp32":
            raise CompilerError(f"precision: {p} for the {half} is not implemented yet; build with --precision fp32")
    return Halves(parts.encoder, parts.scorer, "fp32", "fp32")
