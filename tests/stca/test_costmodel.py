"""The cost model against PyTorch's own FLOP count, and the attention form it picks."""

import pytest
from torch.utils.flop_counter import FlopCounterMode

from compiler.stca.checkpoint import seeded_model
from compiler.stca.costmodel import best_attention, crossover_candidates, naive_cost, row_bytes, split_cost
from compiler.stca.data import sample_requests
from compiler.stca.model import preset


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("form", ["kv", "reordered"])
@pytest.mark.parametrize("fusion", ["projected", "direct"])
@pytest.mark.parametrize("L,N", [(100, 7), (1_000, 64)])
def test_flops_match_pytorchs_flop_counter(name, form, fusion, L, N):
    model = seeded_model(preset(name, attention=form, fusion=fusion))
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
@pytest.mark.parametrize("target,cut", [("in-process", "fp32"), ("python", "fp32"), ("python", "fp16")])
@pytest.mark.parametrize("new_rows", [1.0, 0.3])
def test_the_pick_switches_to_kv_at_the_crossover(name, target, cut, new_rows):
    c, L = preset(name), 2_000
    n_star = crossover_candidates(c, L, target, cut, new_rows)
    assert best_attention(c, L, int(n_star), target, cut, new_rows) == "reordered"
    assert best_attention(c, L, int(n_star) + 1, target, cut, new_rows) == "kv"


def test_with_the_history_cache_the_encoder_pays_only_for_new_rows_and_kv_wins_at_any_n_once_all_are_cached():
    c, L, N = preset("paper"), 10_000, 16
    unique, returning = split_cost(c, L, N, "kv"), split_cost(c, L, N, "kv", new_rows=0.1)
    assert returning.encoder_flops == pytest.approx(0.1 * unique.encoder_flops)
    assert (returning.scorer_flops, returning.cut_bytes) == (unique.scorer_flops, unique.cut_bytes)  # per candidate, all rows
    assert crossover_candidates(c, L, new_rows=0.1) < crossover_candidates(c, L) / 5
    assert best_attention(c, L, N) == "reordered" and best_attention(c, L, 1, new_rows=0.0) == "kv"


@pytest.mark.parametrize("form", ["kv", "reordered"])
def test_row_bytes_are_what_the_row_cache_finds_in_the_exported_encoder(form):
    from compiler.build import cut_model
    from compiler.load.subject import Source, StcaSubject
    from compiler.passes.row_locality import row_graphs

    model = seeded_model(preset("tiny", attention=form))
    _, parts = cut_model(StcaSubject(model, Source("seeded")))
    assert row_bytes(model.config) == row_graphs(parts.encoder, "L").bytes_per_row
    c = model.config
    assert row_bytes(c, "kv") - 4 == 2 * (row_bytes(c, "reordered") - 4)  # K and V against Xt; the key bias alike
    assert row_bytes(c, form, "fp16") - 4 == (row_bytes(c, form) - 4) // 2


def test_pricing_the_cut_moves_the_crossover_where_the_cut_is_copied_between_processes():
    c, L = preset("small"), 2_000
    in_process, copied, copied_half = (crossover_candidates(c, L, t, p) for t, p in
                                       (("in-process", "fp32"), ("python", "fp32"), ("python", "fp16")))
    assert in_process < copied_half < copied  # the kv form's extra bytes cost most when they cross in fp32
    assert best_attention(c, L, round((in_process + copied) / 2), "in-process") == "kv"
    assert best_attention(c, L, round((in_process + copied) / 2), "python") == "reordered"


def test_an_fp16_cut_halves_the_bytes_but_the_key_bias():
    c, L = preset("small"), 2_000
    fp32, fp16 = split_cost(c, L, 64, cut_precision="fp32"), split_cost(c, L, 64, cut_precision="fp16")
    assert fp32.cut_bytes - L * 4 == 2 * (fp16.cut_bytes - L * 4)


def test_the_point_wise_baseline_encodes_the_history_per_candidate():
    c = preset("small")
    one, naive = split_cost(c, 4_000, 1), naive_cost(c, 4_000, 300)
    assert naive.flops == 300 * one.flops
    assert naive.flops / split_cost(c, 4_000, 300).flops > 50  # request-level sharing is the whole point
