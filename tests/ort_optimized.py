"""The graph ONNX Runtime's CPU provider actually runs: what tests of fusions (and of what must not fuse) read."""

import onnx
import onnxruntime as ort


def optimized(graph: onnx.ModelProto, path) -> onnx.ModelProto:
    """The graph as ONNX Runtime's CPU provider runs it, after every graph optimization (its fusions), saved to `path`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))
