"""Python-backend model files that emit copies into a Triton repository (numpy + onnxruntime only)."""
