"""Triton Python-backend model: the point-wise baseline (no request-level batching).

Every candidate is scored alone, with the whole history replicated into its own call of the fused
model, so the history is encoded N times per request: the paper's baseline that STCA's split removes.
Uses BLS (business logic scripting) to call the fused model, so it runs on any backend the fused
model has.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.dont_write_bytecode = True  # the repository may be read-only (object storage, a ConfigMap): never write into it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stca_requests import INPUTS, RequestError, RequestLimits  # noqa: E402  (copied beside this file)

PER_CANDIDATE = ("candidate_item_ids", "candidate_features")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.fused = params["fused_model"]
        self.limits = RequestLimits(**json.loads(params["request_limits"]))

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUTS}
        try:
            _, N = self.limits.validate(inputs)
        except RequestError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
        shared = [pb_utils.Tensor(name, inputs[name]) for name in INPUTS if name not in PER_CANDIDATE]
        scores = []
        for j in range(N):  # one candidate per call: the history is re-encoded every time
            one = [pb_utils.Tensor(name, np.ascontiguousarray(inputs[name][j : j + 1])) for name in PER_CANDIDATE]
            response = pb_utils.InferenceRequest(
                model_name=self.fused, requested_output_names=["scores"], inputs=shared + one
            ).exec()
            if response.has_error():
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {response.error().message()}"))
            scores.append(pb_utils.get_output_tensor_by_name(response, "scores").as_numpy())
        return pb_utils.InferenceResponse([pb_utils.Tensor("scores", np.concatenate(scores))])
