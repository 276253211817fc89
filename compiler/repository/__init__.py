"""The Triton repository: the deployment policy, the writer, the reader, the manifest, the report, the CPU thread budget, TensorRT engines."""
