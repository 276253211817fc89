"""The STCA module: the two attention forms agree, padding is invisible, configs are checked."""

import numpy as np
import pytest

from compiler.core.contract import stca_contract
from compiler.core.errors import CompilerError
from compiler.stca.checkpoint import seeded_model
from compiler.stca.data import sample_requests
from compiler.stca.model import PRESETS, STCAConfig, preset, with_attention


@pytest.mark.parametrize("L,N", [(1, 1), (37, 5), (700, 64)])
def test_kv_and_reordered_forms_give_the_same_scores(L, N):
    kv = seeded_model(preset("tiny", attention="kv"), seed=3)
    reordered = with_attention(kv, "reordered")  # same weights, other computation order
    assert reordered.config.attention == "reordered"
    request = next(sample_requests(kv.config, [L], seed=L, n_candidates=N)).inputs
    a, b = kv.score(request), reordered.score(request)
    assert a.shape == (N, len(kv.config.tasks))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("attention", ["kv", "reordered"])
@pytest.mark.parametrize("pad", [1, 300])
def test_left_padding_with_id_zero_scores_as_the_unpadded_request(attention, pad):
    model = seeded_model(preset("tiny", attention=attention), seed=4)
    request = next(sample_requests(model.config, [50], seed=9, n_candidates=16)).inputs
    np.testing.assert_allclose(model.score(stca_contract(model.config).left_pad(request, pad)), model.score(request), rtol=0, atol=1e-6)


def test_padding_is_masked_not_merely_small():
    """Without the mask a padded request would score differently: the test above can fail."""
    model = seeded_model(preset("tiny"), seed=4)
    request = next(sample_requests(model.config, [5], seed=9, n_candidates=8)).inputs
    padded = stca_contract(model.config).left_pad(request, 500)
    padded["history_item_ids"][:500] = 7  # the same positions as real items instead of padding
    assert np.abs(model.score(padded) - model.score(request)).max() > 1e-3


def test_a_candidates_scores_do_not_depend_on_the_other_candidates():
    """What makes request-level batching exact: scored alone (the point-wise baseline) or among others."""
    model = seeded_model(preset("tiny"))
    request = next(sample_requests(model.config, [20], seed=1, n_candidates=9)).inputs
    together = model.score(request)
    for j in (0, 4, 8):
        alone = model.score({**request, "candidate_item_ids": request["candidate_item_ids"][j : j + 1],
                             "candidate_features": request["candidate_features"][j : j + 1]})
        np.testing.assert_allclose(alone[0], together[j], rtol=0, atol=1e-6)
    assert together.shape == (9, 3) and len(np.unique(together[:, 0])) > 1  # and the candidates differ


def test_paper_preset_matches_the_paper():
    c = PRESETS["paper"]
    assert (c.d_model, c.n_heads, c.head_dim, c.n_layers, c.swiglu_mult) == (1024, 16, 64, 4, 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention": "flash"}, "attention"),
        ({"n_layers": 0}, "n_layers = 0"),
        ({"n_heads": 3, "head_dim": 5}, "divisible by the RankMixer token count"),
        ({"tasks": ()}, "tasks is empty"),
    ],
)
def test_bad_config_is_refused_with_a_named_field(overrides, message):
    with pytest.raises(CompilerError, match=message):
        preset("tiny", **overrides)


def test_unknown_preset_and_unknown_field_are_named():
    with pytest.raises(CompilerError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(CompilerError, match=r"unknown field\(s\) \['widht'\]"):
        STCAConfig.from_dict({"widht": 3})


def test_config_round_trips_through_a_dict():
    c = preset("small", attention="reordered")
    assert STCAConfig.from_dict(c.to_dict()) == c
