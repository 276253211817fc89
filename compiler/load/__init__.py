"""The load stage: what a build compiles (a Subject): this package's STCA model or the user's own ONNX file or ExportedProgram."""
