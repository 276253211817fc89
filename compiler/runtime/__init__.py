"""What runs a compiled graph: ONNX Runtime runners, the history row cache, and the Python-backend models a repository serves."""
