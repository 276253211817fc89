"""Export: one graph for any L and N, checked, equal to PyTorch."""

import numpy as np
import pytest

from compiler.core.errors import CompilerError
from compiler.passes.export import export
from compiler.runtime.ort import OrtGraph
from compiler.stca.data import sample_requests
from tests.models import stca


@pytest.fixture(scope="module")
def exported():
    return stca("tiny")


def test_inputs_and_outputs_have_dynamic_L_and_N(exported):
    _, graph = exported
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.graph.input, *graph.graph.output]}
    assert dims == {
        "history_item_ids": ["L"], "history_actions": ["L"], "history_age_s": ["L"], "user_features": [4],
        "candidate_item_ids": ["N"], "candidate_features": ["N", 3], "scores": ["N", 3],
    }
    assert graph.opset_import[0].version == 18


@pytest.mark.parametrize("L,N", [(1, 1), (7, 3), (10_000, 1_024)])
def test_the_graph_matches_pytorch_at_any_length(exported, L, N):
    model, graph = exported
    request = next(sample_requests(model.config, [L], seed=L, n_candidates=N)).inputs
    expected = model.score(request)
    np.testing.assert_allclose(OrtGraph(graph).run(request)["scores"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("opset", [16, 23])
def test_opsets_outside_tensorrts_range_are_refused(exported, opset):
    model, _ = exported
    with pytest.raises(CompilerError, match=f"opset {opset} is outside 17..20"):
        export(model, opset)
