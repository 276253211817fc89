"""Triton Python-backend model: one ONNX graph in an ONNX Runtime session, with request validation.

Emitted by stca-compiler as <model>/1/model.py beside model.onnx and stca_requests.py; needs numpy and
onnxruntime in the server's Python. A bad request gets an error that names the input and the limit;
the other requests of the same batch still run, and the server keeps serving.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.dont_write_bytecode = True  # the repository may be read-only (object storage, a ConfigMap): never write into it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stca_requests import INPUTS, RequestError, RequestLimits  # noqa: E402  (copied beside this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = config["name"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))  # 0 = one per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), params.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.limits = RequestLimits(**json.loads(params["request_limits"]))
        self.checked = [name for name in self.inputs if name in INPUTS]  # cut tensors come from the encoder

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
        try:
            self.limits.validate(feeds, self.checked)
        except RequestError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
        try:
            outputs = self.session.run(self.outputs, feeds)
        except Exception as e:  # noqa: BLE001 (one request's failure must not take down the batch)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: inference failed: {e}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, outputs)])
