"""The cost model against PyTorch's own FLOP count, and the attention form it picks."""

import pytest
from torch.utils.flop_counter import FlopCounterMode

from compiler.costmodel import best_attention, crossover_candidates, naive_cost, split_cost
from compiler.data import sample_requests
from compiler.load import seeded_model
from compiler.model import preset


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("form", ["kv", "reordered"])
@pytest.mark.parametrize("L,N", [(100, 7), (1_000, 64)])
def test_flops_match_pytorchs_flop_counter(name, form, L, N):
    model = seeded_model(preset(name, attention=form))
    request = next(sample_requests(model.config, [L], seed=0, n_candidates=N)).inputs
    with FlopCounterMode(display=False) as counter:
        model.score(request)
    assert split_cost(model.config, L, N, form).flops == counter.get_total_flops()


def test_kv_moves_work_into_the_encoder():
    c = preset("small")
    kv, reordered = split_cost(c, 2_000, 128, "kv"), split_cost(c, 2_000, 128, "reordered")
    assert kv.encoder_flops > reordered.encoder_flops and kv.scorer_flops < reordered.scorer_flops
    assert kv.cut_bytes > reordered.cut_bytes  # K and V cross instead of Xt


@pytest.mark.parametrize("name", ["small", "paper"])
def test_the_pick_switches_to_kv_at_the_crossover(name):
    c, L = preset(name), 2_000
    n_star = crossover_candidates(c, L)
    assert best_attention(c, L, int(n_star)) == "reordered"
    assert best_attention(c, L, int(n_star) + 1) == "kv"


def test_the_point_wise_baseline_encodes_the_history_per_candidate():
    c = preset("small")
    one, naive = split_cost(c, 4_000, 1), naive_cost(c, 4_000, 300)
    assert naive.flops == 300 * one.flops
    assert naive.flops / split_cost(c, 4_000, 300).flops > 50  # request-level sharing is the whole point
