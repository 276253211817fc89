"""Triton Python-backend model: one ONNX graph in an ONNX Runtime session, with request validation.

Emitted by stca-compiler as <model>/1/model.py beside model.onnx, stca_base_model.py and stca_contract.py;
needs numpy and onnxruntime in the server's Python.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnxruntime as ort  # noqa: E402
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)
from stca_contract import INPUT_NAMES  # noqa: E402


class TritonPythonModel(StcaModel):
    def setup(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.params.get("intra_op_threads", "0"))  # 0 = one per core
        options.inter_op_num_threads = 1
        # Spinning threads keep their cores busy between ops; beside another model's stub on the same cores
        # they take the time the other model needs (the build's thread budget turns it off).
        options.add_session_config_entry("session.intra_op.allow_spinning", self.params.get("allow_spinning", "1"))
        options.log_severity_level = 3
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.validated = [name for name in self.input_names if name in INPUT_NAMES]

    def compute(self, inputs):
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
