"""Synthetic requests: KuaiRand-1K lengths, the planted signal, determinism."""

import numpy as np
import pytest

from compiler.core.errors import CompilerError
from compiler.core.metrics import auc
from compiler.stca.data import World, kuairand_lengths, sample_requests
from compiler.stca.model import preset


def test_lengths_follow_the_kuairand_quantiles_and_the_cap():
    lengths = kuairand_lengths(200_000, max_history=10_000, seed=0)
    for q, expected in ((0.10, 1_998), (0.25, 4_370), (0.50, 8_327)):
        assert abs(np.quantile(lengths, q) / expected - 1) < 0.03, q
    at_cap = (lengths == 10_000).mean()
    assert 0.38 < at_cap < 0.46  # KuaiRand-1K: about 40% of users sit at the cap
    assert lengths.min() >= 1


def test_history_reveals_what_the_labels_reward():
    """The share of a user's history in a candidate's cluster predicts its labels (the planted signal)."""
    world, config = World(), preset("tiny")
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    share, labels = [], []
    for r in sample_requests(config, [512] * 20, seed=3, n_candidates=64, world=world):
        history_clusters = world.item_cluster[[index[i] for i in r.inputs["history_item_ids"]]]
        for item_id in r.inputs["candidate_item_ids"]:
            share.append((history_clusters == world.item_cluster[index[item_id]]).mean())
        labels.append(r.labels)
    labels = np.concatenate(labels)
    assert auc(labels[:, 0], np.array(share)) > 0.75  # finish rises with the share
    assert auc(labels[:, 1], -np.array(share)) > 0.75  # skip falls with it


def test_requests_are_reproducible_and_well_formed():
    config = preset("tiny")
    a = list(sample_requests(config, [5, 300], seed=11, n_candidates=7))
    b = list(sample_requests(config, [5, 300], seed=11, n_candidates=7))
    for x, y in zip(a, b):
        for name in x.inputs:
            np.testing.assert_array_equal(x.inputs[name], y.inputs[name])
    r = a[1]
    assert r.history_length == 300 and r.n_candidates == 7
    assert r.inputs["candidate_features"].shape == (7, config.n_candidate_fields)
    assert (r.inputs["history_item_ids"] > 0).all()  # 0 is reserved for padding
    assert np.all(np.diff(r.inputs["history_age_s"]) < 0)  # most recent last: ages fall


def test_candidates_are_distinct_and_lean_towards_the_users_interests():
    """A request's candidates never repeat, up to the served maximum; half follow the user's interest, so its
    most frequent cluster holds more of them than in a uniform draw of as many distinct items."""
    world, rng = World(), np.random.default_rng(0)
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    largest, uniform = [], []
    for r in sample_requests(preset("tiny"), [50] * 20, seed=5, n_candidates=64, world=world):
        assert len(np.unique(r.inputs["candidate_item_ids"])) == r.n_candidates
        largest.append(np.bincount(world.item_cluster[[index[i] for i in r.inputs["candidate_item_ids"]]]).max())
        uniform.append(np.bincount(world.item_cluster[rng.choice(world.n_items, 64, replace=False)]).max())
    assert np.median(largest) > 1.3 * np.median(uniform)
    widest = next(sample_requests(preset("small"), [5], seed=6, n_candidates=preset("small").max_candidates, world=world))
    assert len(np.unique(widest.inputs["candidate_item_ids"])) == preset("small").max_candidates


def test_more_candidates_than_the_world_has_items_is_refused():
    with pytest.raises(CompilerError, match="1025 distinct candidates asked of a catalog of 1024 items"):
        next(sample_requests(preset("small"), [5], seed=0, n_candidates=1025))
