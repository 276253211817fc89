"""stca-compiler: compile long-history STCA ranking models into a split Triton ensemble.

The pipeline stages are modules with one public function each (load, export, partition, precision,
verify, emit, serve, bench); compiler.build.build() runs them in order. Importing this package is
cheap: torch and onnx load only with the stages that need them.
"""

from compiler.core.errors import CompilerError

__version__ = "0.1.0"
__all__ = ["CompilerError", "__version__"]
