"""benchmarks/cache_sim.py's ring and replica simulation on synthetic key streams (no built repository, no server)."""

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cache_sim.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("cache_sim", SCRIPT)  # benchmarks/ is not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def traffic(users: int = 48, keys_per_user: int = 60, shared: int = 40, visits: int = 6, seed: int = 0):
    """Visit-major requests: each user's own keys every visit, with a few new ones, and a few keys of a shared pool
    (popular items). ([user key a request], [its [M, 2] int64 codes])."""
    rng = np.random.default_rng(seed)
    own = [list(range(u * 1_000, u * 1_000 + keys_per_user)) for u in range(users)]
    names, codes = [], []
    for visit in range(visits):
        for u in range(users):
            own[u] += [u * 1_000 + keys_per_user + visit]  # one new interaction a visit
            pool = rng.choice(shared, 5, replace=False) + 10**6
            keys = np.array(own[u] + pool.tolist(), np.int64)
            names.append(f"user-{u}")
            codes.append(np.stack([keys, keys % 7], axis=1))
    return names, codes


def test_the_ring_keeps_each_user_on_one_replica_and_spreads_users(sim):
    ring = sim.Ring(sim.replica_names(4))
    users = [f"user-{u}" for u in range(1_000)]
    homes = [ring.server(u) for u in users]
    assert homes == [sim.Ring(sim.replica_names(4)).server(u) for u in users]  # a fresh ring agrees: no state
    load = Counter(homes)
    assert set(load) == set(sim.replica_names(4))
    assert max(load.values()) < 1.3 * 250 and min(load.values()) > 0.7 * 250, load
    routed = sim.routes(users * 3, 4, "affinity", seed=0)  # every visit of a user to the same replica
    assert (routed.reshape(3, -1) == routed[:1000]).all()
    spread = sim.routes(users * 3, 4, "random", seed=0).reshape(3, -1)  # random: a user's visits go anywhere
    assert (spread != spread[:1]).any(axis=0).mean() > 0.8


def test_removing_a_replica_moves_only_its_users(sim):
    names = sim.replica_names(4)
    before, after = sim.Ring(names), sim.Ring([n for n in names if n != "replica-2"])
    users = [f"user-{u}" for u in range(1_000)]
    moved = [u for u in users if before.server(u) != after.server(u)]
    assert moved and all(before.server(u) == "replica-2" for u in moved)
    assert len(moved) == sum(before.server(u) == "replica-2" for u in users)


def test_one_replica_is_the_same_cache_whichever_the_routing(sim):
    users, codes = traffic()
    capacity = 1_500
    affinity = sim.simulate(users, codes, 1, "affinity", capacity)
    random = sim.simulate(users, codes, 1, "random", capacity, seed=7)
    assert all((a == b).all() for a, b in zip(affinity, random))
    assert affinity[0].sum() > 0  # it did find rows


def test_affinity_beats_random_below_the_working_set(sim):
    users, codes = traffic()
    ws = sim.working_set(codes, chunk=16)
    assert ws == 48 * (60 + 6) + 40
    capacity = ws // 2 // 4  # half the working set over 4 replicas
    results = {routing: sim.simulate(users, codes, 4, routing, capacity, seed=1) for routing in sim.ROUTINGS}
    rates = {routing: sim.rate(h[48:], m[48:]) for routing, (h, m) in results.items()}  # after each user's first visit
    assert rates["affinity"] > rates["random"] + 0.2, rates
    for hits, misses in results.values():  # every distinct key of every request counted once, found or computed
        assert (hits + misses == [len(c) for c in codes]).all()
