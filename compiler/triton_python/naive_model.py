"""Triton Python-backend model: the point-wise baseline (no request-level batching).

Every candidate is scored alone, with the whole history replicated into its own call of the fused
model, so the history is encoded N times per request: the paper's baseline that STCA's split removes.
Uses BLS (business logic scripting) to call the fused model, so it runs on any backend the fused
model has.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)
from stca_contract import CANDIDATE_INPUTS, INPUT_NAMES  # noqa: E402


class TritonPythonModel(StcaModel):
    def setup(self, args):
        self.fused = self.params["fused_model"]
        self.input_names = self.validated = list(INPUT_NAMES)

    def compute(self, inputs):
        shared = [pb_utils.Tensor(name, inputs[name]) for name in INPUT_NAMES if name not in CANDIDATE_INPUTS]
        scores = []
        for j in range(len(inputs["candidate_item_ids"])):  # one candidate per call: the history is re-encoded every time
            one = [pb_utils.Tensor(name, np.ascontiguousarray(inputs[name][j : j + 1])) for name in CANDIDATE_INPUTS]
            response = pb_utils.InferenceRequest(model_name=self.fused, requested_output_names=["scores"], inputs=shared + one).exec()
            if response.has_error():
                raise RuntimeError(response.error().message())
            scores.append(pb_utils.get_output_tensor_by_name(response, "scores").as_numpy())
        return {"scores": np.concatenate(scores)}
