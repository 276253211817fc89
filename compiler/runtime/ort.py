"""Runners: ONNX Runtime sessions over one graph, and the encoder + scorer pair composed as the ensemble does."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


class OrtGraph:
    """One ONNX graph in an ONNX Runtime CPU session; run() takes and returns dicts keyed by name."""

    def __init__(self, model: onnx.ModelProto | Path | str, threads: int = 0, spinning: bool = True):
        """spinning: whether idle intra-op threads spin for more work (ONNX Runtime's default); off where runs of
        several sessions take turns on the same cores, as a served repository's models and a benchmark's A/B do."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = one per core
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        outputs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))


def with_cut(encoder: OrtGraph, inputs: dict) -> dict:
    """A request's inputs and the encoder's outputs on it: every value the scorer can read, by name."""
    return {**inputs, **encoder.run(inputs)}


@dataclass
class SplitRunner:
    """encoder once per request, then the scorer over all candidates: what the Triton ensemble runs."""

    encoder: OrtGraph  # or any runner with run(feeds) -> outputs by name (compiler.repository.engines.TrtGraph)
    scorer: OrtGraph

    def score(self, inputs: dict) -> np.ndarray:
        """The model's first output (STCA: scores (N, T))."""
        return self.scorer.run(with_cut(self.encoder, inputs))[self.scorer.output_names[0]]
