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


class TritonPythonModel(StcaModel):
    def setup(self, args):
        self.fused = self.params["fused_model"]
        self.input_names = self.validated = list(self.contract.names)
        specs, dim = self.contract.specs, self.contract.candidate_dim
        self.candidate_axis = {name: specs[name].dims.index(dim) for name in self.contract.candidate_inputs}

    def compute(self, inputs):
        shared = [pb_utils.Tensor(name, inputs[name]) for name in self.input_names if name not in self.candidate_axis]
        first, axis = next(iter(self.candidate_axis.items()))
        outputs = {name: [] for name in self.contract.outputs}
        for j in range(inputs[first].shape[axis]):  # one candidate per call: the history is re-encoded every time
            one = [pb_utils.Tensor(name, np.ascontiguousarray(np.take(inputs[name], [j], axis=a))) for name, a in self.candidate_axis.items()]
            response = pb_utils.InferenceRequest(model_name=self.fused, requested_output_names=list(outputs), inputs=shared + one).exec()
            if response.has_error():
                raise RuntimeError(response.error().message())
            for name, parts in outputs.items():
                parts.append(pb_utils.get_output_tensor_by_name(response, name).as_numpy())
        return {name: np.concatenate(parts) for name, parts in outputs.items()}
