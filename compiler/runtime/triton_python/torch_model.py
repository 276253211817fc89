"""Triton Python-backend model: the PyTorch model itself, fp32: the baselines a team starts from.

Eager (stca_torch), or with the parameter compile = "inductor" under torch.compile (stca_inductor;
compiler.runtime.inductor: dynamic shapes, the cache directory, what recompiles). The compiled model warms up in
initialize, before Triton calls the model ready, so no request pays for compiling the warm-up's graphs; the warm-up's
seconds go to Triton's log and to /metrics (stca_torch_compile_seconds, and stca_torch_compiled_graphs, which grows
where a request's shape compiles a graph of its own, e.g. L = 1 or N = 1).

Emitted by stca-compiler's --baselines for the python target, with the checkpoint in checkpoint/ beside
this file; needs torch and the stca-compiler package in the server's Python (the embedded server's
virtualenv has both).
"""

import locale
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)

from compiler.core.contract import INPUT_NAMES  # noqa: E402
from compiler.runtime import inductor  # noqa: E402
from compiler.stca.checkpoint import load_model  # noqa: E402


class TritonPythonModel(StcaModel):
    def setup(self, args):
        threads = int(self.params.get("intra_op_threads", "0"))
        if threads:
            torch.set_num_threads(threads)
        self.model = load_model(os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint"))
        self.input_names = self.validated = list(INPUT_NAMES)
        self.graphs = None
        mode = self.params.get(inductor.COMPILE_PARAMETER, "")
        if mode:
            self._compile(mode, args)

    def compute(self, inputs):
        scores = self.model.score({name: value.copy() for name, value in inputs.items()})  # Triton's arrays are read-only
        if self.graphs is not None:
            self._count_graphs(inputs)
        return {"scores": scores}

    def _compile(self, mode, args):
        if mode != inductor.INDUCTOR_MODE:
            raise RuntimeError(f"{self.name}: compile = {mode!r}; this model knows {inductor.INDUCTOR_MODE!r} (or none: eager)")
        # The stub's interpreter is embedded with an isolated config, which leaves the process in the C locale, so open()
        # reads ASCII, and inductor reads its UTF-8 kernel templates with open() (torch 2.13: UnicodeDecodeError in
        # torch/_inductor/kernel/mm_grouped.py at the first compile). This process only runs this model.
        try:
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        except locale.Error:
            pb_utils.Logger.log_warn(f"{self.name}: no C.UTF-8 locale; inductor may fail to read its templates as ASCII")
        self.model = inductor.CompiledModel(self.model)
        warmup = self.model.warmup
        pb_utils.Logger.log_info(f"{self.name}: {warmup.text()}")
        labels = {"model": self.name, "instance": args["model_instance_name"]}
        # A Metric must not outlive its MetricFamily, so the families are kept as long as the model.
        self.compile_families = [
            pb_utils.MetricFamily(name=inductor.COMPILE_SECONDS_METRIC, kind=pb_utils.MetricFamily.GAUGE,
                                  description="Seconds the torch.compile warm-up took at load, compiling included"),
            pb_utils.MetricFamily(name=inductor.COMPILED_GRAPHS_METRIC, kind=pb_utils.MetricFamily.GAUGE,
                                  description="Graphs torch.compile has compiled, at warm-up and since"),
        ]
        seconds, self.graphs = (family.Metric(labels=labels) for family in self.compile_families)
        seconds.set(warmup.seconds)
        self.compile_metrics = (seconds, self.graphs)
        self.reported_graphs = inductor.compiled_graphs()  # this process compiles this model's graphs only
        self.graphs.set(self.reported_graphs)

    def _count_graphs(self, inputs):
        now = inductor.compiled_graphs()
        if now != self.reported_graphs:
            shapes = ", ".join(f"{name} {list(inputs[name].shape)}" for name in (INPUT_NAMES[0], INPUT_NAMES[-1]))
            pb_utils.Logger.log_warn(f"{self.name}: a request ({shapes}) compiled {now - self.reported_graphs} more graph(s)")
            self.graphs.set(now)
            self.reported_graphs = now
