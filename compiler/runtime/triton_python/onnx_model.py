"""Triton Python-backend model: an ONNX graph in an ONNX Runtime session, with request validation.

Emitted by stca-compiler as <model>/1/model.py beside model.onnx, stca_base_model.py and stca_contract.py;
needs numpy and onnxruntime in the server's Python. What it runs, by what lies beside it:

  model.onnx alone                   model.onnx (the history encoder, the scorer, or the fused graph)
  encoder.onnx and model.onnx        stca_split, both halves in one process: the encoder, then model.onnx (the scorer)
                                     on the request and the cut, which never leaves the process
  + a row cache (history_cache)      the history encoder's work is done by the key graph, the cache and the row graph
                                     (stca_row_cache.CachedEncoder; key_graph.onnx, row_graph.onnx, stca_row_cache.py
                                     beside) where history_cache_bytes > 0, or by the whole encoder while the cache does
                                     not pay, and the cache's counters go to Triton's /metrics. In the history encoder that is the answer; in stca_split the scorer runs
                                     on it. In the scorer (keys_arrive) the inputs are the row keys the encoder step's
                                     key graph made, and the cut is assembled from them before model.onnx (with
                                     history_cache_bytes 0 it computes each request's distinct rows).

stca_split, which Triton's statistics see as one model, reports the milliseconds each half took on /metrics
(HALF_TIME_METRIC, a counter per half), so a benchmark can still say where a request's time went.
"""

import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stca_base_model import StcaModel  # noqa: E402  (copied beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))


ENCODER_FILE = "encoder.onnx"  # stca_split's first graph (compiler.repository.writer.SPLIT_ENCODER_FILE)
HALF_TIME_METRIC = "stca_split_half_ms"  # compiler.serving.server_stats reads it


class TritonPythonModel(StcaModel):
    def setup(self, args):
        self.cache_bytes = int(self.params.get("history_cache_bytes", "0"))
        keys_arrive = json.loads(self.params.get("history_cache", "{}")).get("keys_arrive", False)
        split = os.path.isfile(os.path.join(HERE, ENCODER_FILE))
        self.cached_encoder = self._cached_encoder(args) if self.cache_bytes > 0 or keys_arrive else None
        # request inputs -> the cut tensors, where this model makes them before model.onnx runs (or as its answer)
        if keys_arrive:
            self.encode = self.cached_encoder.assemble
        elif self.cached_encoder is not None:
            self.encode = self.cached_encoder
        else:
            self.encode = OrtSession(ENCODER_FILE, self.params).run if split else None
        # model.onnx, unless this is the history encoder answering from its row cache
        self.session = OrtSession("model.onnx", self.params) if self.encode is None or split or keys_arrive else None
        self.input_names = [i["name"] for i in json.loads(args["model_config"])["input"]]
        self.validated = [name for name in self.input_names if name in self.contract.specs]
        self.half_ms = None
        if split:  # the family is kept as long as its metrics (see _cached_encoder)
            self.half_family = pb_utils.MetricFamily(name=HALF_TIME_METRIC, kind=pb_utils.MetricFamily.COUNTER,
                                                     description="Milliseconds stca_split spent in each half, over all requests")
            self.half_ms = {half: self.half_family.Metric(labels={"model": self.name, "instance": args["model_instance_name"], "half": half})
                            for half in ("encoder", "scorer")}

    def compute(self, inputs):
        start = time.perf_counter()
        cut = self.encode(inputs) if self.encode is not None else {}
        encoded = time.perf_counter()
        outputs = cut if self.session is None else self.session.run({**inputs, **cut})
        if self.half_ms is not None:
            self.half_ms["encoder"].increment(1e3 * (encoded - start))
            self.half_ms["scorer"].increment(1e3 * (time.perf_counter() - encoded))
        if self.cached_encoder is not None:
            self._report()
        return outputs

    def _cached_encoder(self, args):
        from stca_row_cache import SHARED_SLACK_BYTES, CachedEncoder, RowCache, RowKey, RowSpec, SharedRegion

        spec = json.loads(self.params["history_cache"])
        with open(os.path.join(HERE, "row_graph.onnx"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != spec["weights_sha256"]:  # rows of other weights must never be served
            raise RuntimeError(f"{self.name}: row_graph.onnx is not the graph this config was built for (sha256 {digest[:12]} "
                               f"is not {spec['weights_sha256'][:12]})")
        self.key_session = None if spec.get("keys_arrive") else OrtSession("key_graph.onnx", self.params)
        self.row_session = OrtSession("row_graph.onnx", self.params)
        # requests the cache would not pay for skip it (CacheWorth), none where only the keys arrive; the whole encoder
        # answers them, unless the scorer reads each distinct row once (multiplicity): the row graph then computes those
        whole = ENCODER_FILE if os.path.isfile(os.path.join(HERE, ENCODER_FILE)) else "model.onnx"
        skip = self.params.get("history_cache_skip", "1") == "1" and self.cache_bytes > 0 and not spec.get("keys_arrive")
        self.whole_session = OrtSession(whole, self.params) if skip and not spec.get("multiplicity") else None
        rows = {name: RowSpec(dtype, tuple(shape)) for name, (dtype, shape) in spec["rows"].items()}
        keys = [RowKey(name, dtype) for name, dtype in spec["keys"]]
        instances = sum(g.get("count", 1) for g in json.loads(args["model_config"]).get("instance_group", [])) or 1
        # the instances (each a process) share one cache of the whole budget; none with a budget of 0 (every distinct
        # row computed)
        admission = self.params.get("history_cache_admission", "frequency")
        shared = SharedRegion(f"{self.name}-{digest[:12]}-{self.cache_bytes}", self.cache_bytes + SHARED_SLACK_BYTES) \
            if instances > 1 and self.cache_bytes > 0 else None
        cache = RowCache(self.cache_bytes, rows, len(keys), admission, shared) if self.cache_bytes > 0 else None
        labels = {"model": self.name, "instance": args["model_instance_name"], "weights": digest[:12]}
        # A Metric must not outlive its MetricFamily, so the families are kept as long as the model.
        self.metric_families = {
            name: pb_utils.MetricFamily(name=f"stca_history_cache_{name}", description=text, kind=kind)
            for name, text, kind in (
                ("hits", "Distinct history row keys found in the row cache", pb_utils.MetricFamily.COUNTER),
                ("misses", "Distinct history row keys computed by the row graph", pb_utils.MetricFamily.COUNTER),
                ("evictions", "Rows dropped from the row cache to make room", pb_utils.MetricFamily.COUNTER),
                ("admitted", "Computed rows kept in the row cache", pb_utils.MetricFamily.COUNTER),
                ("rejected", "Computed rows not kept: the full cache held rows asked for more often", pb_utils.MetricFamily.COUNTER),
                ("bypassed", "Requests that skipped the cache, not consulted: its path cost more of late",
                 pb_utils.MetricFamily.COUNTER),
                ("entries", "Rows held in the row cache", pb_utils.MetricFamily.GAUGE),
                ("bytes", "Bytes the row cache holds, rows, keys and index", pb_utils.MetricFamily.GAUGE),
            )
        }
        self.metrics = {name: family.Metric(labels=labels) for name, family in self.metric_families.items()}
        self.reported = {name: 0 for name in self.metrics}
        return CachedEncoder(self.key_session.run if self.key_session else None, self.row_session.run, keys, cache,
                             self.whole_session.run if self.whole_session else None, spec.get("multiplicity"), skip)

    def _report(self):
        if self.cached_encoder.cache is None:
            return
        # Only what changed: each update is a message to Triton's process (demo model, L=2,000, never-repeating item
        # ids: updating all eight on every 8th request instead of every request served 1.08x)
        for name, value in self.cached_encoder.counters().items():
            if name not in self.metrics or value == self.reported[name]:
                continue
            if name in ("entries", "bytes"):  # the shared cache's size as this request left it: readers take the largest
                self.metrics[name].set(value)
            else:
                self.metrics[name].increment(value - self.reported[name])
            self.reported[name] = value


class OrtSession:
    """One ONNX file beside this model.py in an ONNX Runtime session with the model's thread budget."""

    def __init__(self, file: str, params: dict):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))  # 0 = one per core
        options.inter_op_num_threads = 1
        # Spinning threads keep their cores busy between ops; beside another model's stub on the same cores
        # they take the time the other model needs (the build's thread budget turns it off).
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "1"))
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.path.join(HERE, file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})))
