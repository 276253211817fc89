"""Triton Python-backend model: the PyTorch model itself, eager, fp32: the baseline a team starts from.

Emitted by stca-compiler's --baselines for the python target, with the checkpoint in checkpoint/ beside
this file; needs torch and the stca-compiler package in the server's Python (the embedded server's
virtualenv has both).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)

from compiler.core.contract import INPUT_NAMES  # noqa: E402
from compiler.stca.checkpoint import load_model  # noqa: E402


class TritonPythonModel(StcaModel):
    def setup(self, args):
        threads = int(self.params.get("intra_op_threads", "0"))
        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint"))
        self.input_names = self.validated = list(INPUT_NAMES)

    def compute(self, inputs):
        return {"scores": self.model.score({name: value.copy() for name, value in inputs.items()})}  # Triton's arrays are read-only
