"""Export stage: the WHOLE model -> one ONNX graph with dynamic history length L and candidate count N.

torch.onnx.export(dynamo=True) traces with torch.export; L and N become the symbolic dims "L" and "N"
in every value_info, which the partition pass uses to rebuild shapes on the scorer side.
"""

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass

import onnx
import torch

from compiler.core.contract import INPUT_NAMES, OUTPUT_NAMES, SPECS
from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.passes.lint import OPSETS
from compiler.stca.model import STCA

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB; a bigger model is refused (no external data)


@dataclass(frozen=True)
class Exported:
    model: onnx.ModelProto  # with weights inline unless it was too large (then see path)
    opset: int


def example_inputs(model: STCA, L: int = 16, N: int = 4) -> tuple[torch.Tensor, ...]:
    """A small request for tracing; L, N > 1 so torch.export does not specialise them to 1."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(1, 1_000, (L,), generator=g),
        torch.randint(0, c.n_actions, (L,), generator=g),
        torch.rand(L, generator=g) * 1e5,
        torch.randint(0, 1_000, (c.n_user_fields,), generator=g),
        torch.randint(1, 1_000, (N,), generator=g),
        torch.randint(0, 1_000, (N, c.n_candidate_fields), generator=g),
    )


def export(model: STCA, opset: int = 18) -> Exported:
    c = model.config
    L = torch.export.Dim("L", min=1, max=c.max_history)
    N = torch.export.Dim("N", min=1, max=c.max_candidates)
    symbolic = {"L": L, "N": N}  # K and F are the model's fixed field counts
    dynamic = {name: {axis: symbolic[d] for axis, d in enumerate(spec.dims) if d in symbolic} or None for name, spec in SPECS.items()}
    proto = to_onnx(model.eval(), example_inputs(model), dynamic, list(INPUT_NAMES), list(OUTPUT_NAMES), opset)
    return Exported(proto, opset)


def to_onnx(model, args=(), dynamic_shapes=None, input_names=None, output_names=None, opset: int = 18) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) of a module or an ExportedProgram, quietly, checked, within protobuf's 2 GB."""
    if opset not in OPSETS:
        raise CompilerError(f"export: opset {opset} is outside {OPSETS.start}..{OPSETS.stop - 1} (TensorRT's parser range)")
    chatter = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and axis-renaming chatter
            program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=input_names,
                                        output_names=output_names, opset_version=opset)
    finally:
        quiet.setLevel(level)
    log.debug("exporter output:\n%s", chatter.getvalue())
    proto = program.model_proto
    if proto.ByteSize() > EXTERNAL_DATA_BYTES:
        raise CompilerError(
            f"export: the model is {proto.ByteSize() / 1e9:.1f} GB, over ONNX's 2 GB single-file limit; "
            "external data is not supported (an STCA model: use a smaller item_vocab)"
        )
    onnx.checker.check_model(proto, full_check=True)
    return proto
