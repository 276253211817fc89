"""Synthetic requests with a planted signal and real history lengths.

There is no public long-history dataset on these machines, so requests come from a small generative
world: items belong to clusters, each user has sparse latent interests over the clusters, histories are
drawn from those interests (with actions that reveal affinity), and each candidate's labels depend on the
user's affinity for its cluster. A model can only rank well by reading the history.

History lengths follow KuaiRand-1K (Kuaishou, one month of logs): per-user quantiles p10 1,998 /
p25 4,370 / p50 8,327 / p75 14,990 / p90 24,418, interpolated log-linearly and clipped at the served
maximum, which puts about 40% of users at the cap of 10,000.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from compiler.core.contract import INPUT_NAMES, Contract
from compiler.core.errors import CompilerError
from compiler.stca.model import PRESETS, STCAConfig

KUAIRAND_QUANTILES = (  # (quantile, history length); the two ends are assumptions, the rest measured
    (0.0, 50),
    (0.10, 1_998),
    (0.25, 4_370),
    (0.50, 8_327),
    (0.75, 14_990),
    (0.90, 24_418),
    (1.0, 60_000),
)
GENERATOR_VERSION = 3  # bump when the training impressions a seed produces change: cached demo checkpoints key on it


def kuairand_lengths(n: int, max_history: int, seed: int) -> np.ndarray:
    """n history lengths drawn from the KuaiRand-1K per-user distribution, clipped at max_history."""
    q, lengths = np.array(KUAIRAND_QUANTILES, dtype=np.float64).T
    drawn = np.exp(np.interp(np.random.default_rng(seed).random(n), q, np.log(lengths)))
    return np.clip(np.round(drawn), 1, max_history).astype(np.int64)


@dataclass(frozen=True)
class World:
    """The generative world behind the requests: a catalog of clustered items and the label rule."""

    n_clusters: int = 16
    n_items: int = 1_024  # the catalog: the default max_candidates, so every served N can be distinct
    n_head_items: int = 256  # the popular head that histories and training impressions come from: small enough that
    # a model learns each one's cluster in a few CPU minutes
    interest_concentration: float = 0.3  # Dirichlet alpha: small = few clusters per user
    seed: int = 1234
    item_ids: np.ndarray = field(init=False, repr=False)  # raw ids, hashed in-graph
    item_cluster: np.ndarray = field(init=False, repr=False)
    item_author: np.ndarray = field(init=False, repr=False)
    item_duration: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        # The head and the tail come from separate generators, so the head does not depend on the catalog's size.
        head, tail = self._items(np.random.default_rng(self.seed), self.n_head_items), self._items(
            np.random.default_rng(self.seed + 1), self.n_items - self.n_head_items)
        fresh = ~np.isin(tail[0], head[0])  # a tail id that repeats a head id (about 1 in 4 million) is dropped
        for name, h, t in zip(("item_ids", "item_cluster", "item_author", "item_duration"), head, tail):
            object.__setattr__(self, name, np.concatenate([h, t[fresh]]))

    def _items(self, rng: np.random.Generator, n: int) -> tuple:
        ids = 1 + rng.choice(10**9 - 1, size=n, replace=False)  # raw ids, never 0 (padding)
        cluster = rng.integers(0, self.n_clusters, n)
        author = cluster * 8 + rng.integers(0, 8, n)  # authors stay in a cluster
        return ids.astype(np.int64), cluster, author, rng.integers(0, 16, n)

    def affinity(self, interest: np.ndarray, items: np.ndarray) -> np.ndarray:
        """How much a user likes items, scaled so a user with uniform interest has affinity 1."""
        return interest[self.item_cluster[items]] * self.n_clusters

    def labels(self, rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
        """(N, 3) labels for the tasks finish, skip, like."""
        a = np.log1p(affinity)
        logits = np.stack([2.5 * a - 1.5, -2.5 * a + 0.5, 2.0 * a - 3.0], axis=1)
        logits += rng.normal(0.0, 0.5, logits.shape)
        return (rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


@dataclass
class Request:
    """One user's request: the inputs a client sends, plus labels when they are known."""

    inputs: dict
    labels: np.ndarray | None = None  # (N, T) float32

    @property
    def history_length(self) -> int:
        return int(self.inputs["history_item_ids"].shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.inputs["candidate_item_ids"].shape[0])


def sample_request(
    world: World, config: STCAConfig, rng: np.random.Generator, history_length: int, n_candidates: int, impressions: bool = False
) -> Request:
    interest = rng.dirichlet(np.full(world.n_clusters, world.interest_concentration))
    cluster_p = 0.8 * interest + 0.2 / world.n_clusters
    history = _head_items(world, rng, rng.choice(world.n_clusters, history_length, p=cluster_p))
    a = world.affinity(interest, history)
    action_logits = np.stack([-a, a - 0.5, 0.7 * a - 2.0, np.full_like(a, -3.0)], axis=1)
    action_p = np.exp(action_logits) / np.exp(action_logits).sum(axis=1, keepdims=True)
    actions = (action_p.cumsum(axis=1) > rng.random((history_length, 1))).argmax(axis=1)
    gaps = rng.exponential(3_600.0, history_length)  # about an hour between interactions
    age_s = np.cumsum(gaps[::-1])[::-1]  # most recent last, so ages fall towards the end

    # Half the candidates come from the user's interests (what retrieval would return), half at random.
    n_targeted = n_candidates // 2
    if impressions:
        # Training: a stream of impressions, where an item the user likes comes back (the repeats are what a small
        # model learns its clusters from in minutes); no item twice until its cluster in the head runs out.
        targeted = _head_items(world, rng, rng.choice(world.n_clusters, n_targeted, p=interest), distinct=True)
        rest = np.setdiff1d(np.arange(world.n_head_items), targeted)
        fill = n_candidates - n_targeted
        candidates = np.concatenate([targeted, rng.choice(rest, fill, replace=fill > len(rest))])
    else:
        # A ranking request: distinct candidates, from the head while it has enough of them.
        pool = world.n_head_items if n_candidates <= world.n_head_items else len(world.item_ids)
        if n_candidates > pool:
            raise CompilerError(f"data: {n_candidates} distinct candidates asked of a catalog of {pool} items")
        weight = interest[world.item_cluster[:pool]] + 1e-9  # every item reachable: a quota larger than a cluster fills
        targeted = rng.choice(pool, n_targeted, replace=False, p=weight / weight.sum())
        rest = np.setdiff1d(np.arange(pool), targeted)
        candidates = np.concatenate([targeted, rng.choice(rest, n_candidates - n_targeted, replace=False)])
    rng.shuffle(candidates)
    F = config.n_candidate_fields
    features = np.stack(
        [world.item_author[candidates], world.item_duration[candidates], world.item_cluster[candidates]]
        + [rng.integers(0, 1_000, n_candidates) for _ in range(max(F - 3, 0))],
        axis=1,
    )[:, :F]
    inputs = {
        "history_item_ids": world.item_ids[history],
        "history_actions": actions.astype(np.int64),
        "history_age_s": age_s.astype(np.float32),
        "user_features": rng.integers(0, 10_000, config.n_user_fields).astype(np.int64),  # profile noise
        "candidate_item_ids": world.item_ids[candidates],
        "candidate_features": features.astype(np.int64),
    }
    labels = world.labels(rng, world.affinity(interest, candidates))
    T = len(config.tasks)
    labels = np.concatenate([labels, np.zeros((n_candidates, max(T - 3, 0)), np.float32)], axis=1)[:, :T]
    return Request(inputs, labels)


def _head_items(world: World, rng: np.random.Generator, clusters: np.ndarray, distinct: bool = False) -> np.ndarray:
    """One random item of the catalog's head from each given cluster; with distinct, no item twice until its
    cluster runs out."""
    head = world.item_cluster[: world.n_head_items]
    order = np.argsort(head, kind="stable")
    starts = np.searchsorted(head[order], np.arange(world.n_clusters))
    counts = np.bincount(head, minlength=world.n_clusters)
    if not distinct:
        return order[starts[clusters] + (rng.random(len(clusters)) * counts[clusters]).astype(np.int64)]
    items = np.empty(len(clusters), np.int64)
    for k in np.unique(clusters):
        slots = np.flatnonzero(clusters == k)
        members = order[starts[k] : starts[k] + counts[k]]
        items[slots] = rng.permutation(members)[np.arange(len(slots)) % counts[k]]
    return items


def sample_requests(config: STCAConfig, lengths, seed: int, n_candidates: int = 64, world: World | None = None,
                    impressions: bool = False):
    """One request per history length in `lengths`, reproducible from `seed` (training impressions with `impressions`)."""
    world = world or World()
    rng = np.random.default_rng(seed)
    for L in lengths:
        yield sample_request(world, config, rng, int(L), n_candidates, impressions)


def contract_requests(contract: Contract, lengths, n_candidates: int, seed: int) -> list[dict]:
    """Requests for a served contract (the client's or a manifest's, no model at hand): this world's for STCA's
    inputs, else drawn from the contract's dtypes and ranges. Every size is clipped to the served maximum."""
    sizes = [contract.sizes(L, n_candidates) for L in lengths]
    if contract.names != INPUT_NAMES:
        return [contract.generate(s, seed=seed + k) for k, s in enumerate(sizes)]
    shape = replace(PRESETS["small"], n_user_fields=contract.fixed["K"], n_candidate_fields=contract.fixed["F"])
    rng, world = np.random.default_rng(seed), World()
    return [sample_request(world, shape, rng, s["L"], s["N"]).inputs for s in sizes]


@dataclass(frozen=True)
class RepeatedUsers:
    """Traffic from users who come back, the load a history cache is for. Each user's first request has a
    KuaiRand-1K history length; at each later visit the user has done `1 + Poisson(new_items_mean - 1)` new
    interactions since the last one, `Exponential(visit_gap_mean_s)` seconds ago at most, and every older item
    has aged by that gap (its age bucket moves when it crosses a power of two). History items come from a
    Zipf(`zipf_exponent`) popularity over `catalog` items, so users share items; actions from a fixed mix.
    Visits are interleaved round-robin over users, as a server sees them; the oldest items fall off past the
    served maximum."""

    users: int = 8
    visits: int = 12
    new_items_mean: float = 4.0
    visit_gap_mean_s: float = 2 * 3_600.0
    catalog: int = 100_000
    zipf_exponent: float = 1.05
    action_mix: tuple[float, ...] = (0.5, 0.3, 0.15, 0.05)  # the first len(action_mix) actions, in these shares


def repeated_user_requests(config: STCAConfig, traffic: RepeatedUsers, seed: int, n_candidates: int = 64,
                           world: World | None = None) -> list[dict]:
    """traffic.users x traffic.visits requests (inputs), visit-major: every user's first visit, then every second..."""
    world = world or World()
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, traffic.catalog + 1, dtype=np.float64)
    popularity = ranks ** -traffic.zipf_exponent
    popularity /= popularity.sum()
    catalog_ids = 1 + rng.choice(10**9 - 1, size=traffic.catalog, replace=False).astype(np.int64)  # never 0 (padding)
    actions = np.array(traffic.action_mix[: config.n_actions]) / sum(traffic.action_mix[: config.n_actions])

    def interactions(n: int) -> tuple[np.ndarray, np.ndarray]:
        return catalog_ids[rng.choice(traffic.catalog, n, p=popularity)], rng.choice(len(actions), n, p=actions).astype(np.int64)

    users = []
    for L in kuairand_lengths(traffic.users, config.max_history, seed=seed):
        items, acts = interactions(int(L))
        ages = np.cumsum(rng.exponential(3_600.0, int(L))[::-1])[::-1]  # most recent last
        profile = sample_request(world, config, rng, 1, 1).inputs["user_features"]
        users.append({"history_item_ids": items, "history_actions": acts, "history_age_s": ages, "user_features": profile})
    requests = []
    for visit in range(traffic.visits):
        for user in users:
            if visit:
                gap = rng.exponential(traffic.visit_gap_mean_s)
                n = 1 + rng.poisson(traffic.new_items_mean - 1)
                items, acts = interactions(n)
                new_ages = np.sort(rng.uniform(0.0, gap, n))[::-1]
                for name, new in (("history_item_ids", items), ("history_actions", acts), ("history_age_s", new_ages)):
                    grown = np.concatenate([user[name] + (gap if name == "history_age_s" else 0), new])
                    user[name] = grown[-config.max_history:]
            candidates = sample_request(world, config, rng, 1, n_candidates).inputs
            requests.append({**candidates, **{k: v.astype(np.float32) if k == "history_age_s" else v.copy() for k, v in user.items()}})
    return requests
