"""Graph passes over ONNX: the graph index, export, layer norms on rows, the partition, the cut's dtype, row locality, the TensorRT lint."""
