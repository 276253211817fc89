"""Triton Python-backend model: the ensemble's first step where the composing models run on a C++ backend.

ONNX Runtime's and TensorRT's backends check only dtypes and ranks; this model checks a request against
the whole contract (compiler.core.contract: dims within the built limits, ids in range, finite floats) and
passes every input on unchanged under the name its config gives (the same order as the inputs), so a bad
request gets an error naming the input instead of reaching the graphs. numpy only.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)


class TritonPythonModel(StcaModel):
    def setup(self, args):
        config = json.loads(args["model_config"])
        self.input_names = self.validated = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def compute(self, inputs):
        return {out: inputs[name] for name, out in zip(self.input_names, self.output_names)}
