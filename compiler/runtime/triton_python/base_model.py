"""What every stca-compiler Python-backend model shares: parameters, the request contract, one answer per request.

Copied beside each emitted model.py as stca_base_model.py (with stca_contract.py); numpy and Triton's
Python-backend utilities only. A subclass sets `input_names` and `validated` in setup() and computes in
compute(); a request that breaks the contract gets an error naming the input and the limit, and one that
fails later gets the failure, while the other requests of the batch are answered as usual.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from stca_contract import CONTRACT_PARAMETER, Contract, RequestError


class StcaModel:
    input_names: list[str] = []
    validated: list[str] = []  # the request inputs this model checks (cut tensors come from the encoder)

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.contract = Contract.from_dict(json.loads(self.params[CONTRACT_PARAMETER]))
        self.setup(args)

    def setup(self, args):
        raise NotImplementedError

    def compute(self, inputs: dict) -> dict:
        raise NotImplementedError

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
        try:
            self.contract.validate(inputs, self.validated)
        except RequestError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
        try:
            outputs = self.compute(inputs)
        except Exception as e:  # noqa: BLE001 (one request's failure must not take down the batch)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: inference failed: {e}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in outputs.items()])
