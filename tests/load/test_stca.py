"""Loading STCA with the attention form left to the cost model: the history row cache's expected hit rate moves the pick."""

import pytest

from compiler.core.errors import CompilerError
from compiler.load.stca import StcaSpec, load_stca
from compiler.stca.costmodel import crossover_candidates
from compiler.stca.model import preset


def test_returning_users_make_auto_pick_kv_where_unique_traffic_picks_reordered():
    c = preset("small")
    N = int(crossover_candidates(c, c.max_history)) - 1  # below the crossover on unique traffic
    unique = load_stca(StcaSpec(preset="small", attention="auto", expected_candidates=N), "onnxruntime", "fp32")
    cached = load_stca(StcaSpec(preset="small", attention="auto", expected_candidates=N, expected_hit_rate=0.9), "onnxruntime", "fp32")
    assert unique.model.config.attention == "reordered" and cached.model.config.attention == "kv"
    choice = cached.source.attention_choice
    assert (choice.chosen, choice.candidates, choice.hit_rate) == ("kv", N, 0.9)
    assert choice.flops["kv"] < unique.source.attention_choice.flops["kv"]  # the encoder computes a tenth of the rows


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_hit_rate_that_is_not_a_fraction_is_refused(rate):
    with pytest.raises(CompilerError, match="expected hit rate"):
        StcaSpec(preset="small", attention="auto", expected_hit_rate=rate)
