"""The row cache's own rules: least recently used rows are the victims, a full cache admits a new row only over a less
asked-for one, the budget holds, keys are exact, every answer is the rows the row graph computes, and a cache that
does not pay is skipped."""

import multiprocessing
import os
import resource
import time

import numpy as np
import pytest

from compiler.runtime.row_cache import (ADMISSIONS, ENTRY_OVERHEAD_BYTES, Arena, SHARED_SLACK_BYTES, CachedEncoder, CacheWorth, KeyIndex,
                                        RowCache, RowKey, RowRate, RowSpec, SharedRegion, distinct, entry_bytes, from_codes, key_codes,
                                        region_files)
from compiler.serving.server import status_bytes

SPEC = {"rows": RowSpec("float32", (3,))}


def rows_of(codes: np.ndarray) -> dict:
    """A stand-in row graph whose rows are a known function of the key, so every answer can be checked."""
    return {"rows": np.stack([codes.sum(axis=1), codes[:, 0], -codes[:, -1]], axis=1).astype(np.float32)}


def cache_of(entries: int, key_width: int = 2, admission: str = "frequency") -> RowCache:
    return RowCache(entries * (SPEC["rows"].nbytes + 8 * key_width + ENTRY_OVERHEAD_BYTES), SPEC, key_width, admission)


def held(cache: RowCache) -> set[tuple]:
    return {tuple(codes) for codes in cache.index.codes[cache.index.live]}


def codes(*keys) -> np.ndarray:
    return np.array(keys, dtype=np.int64).reshape(len(keys), -1)


def test_without_admission_the_least_recently_used_row_is_evicted_first():
    cache = cache_of(3, admission="all")
    for key in ([1, 0], [2, 0], [3, 0]):
        cache.lookup(codes(key), rows_of)
    cache.lookup(codes([1, 0]), rows_of)  # 1 is now the most recently used; 2 the least
    out = cache.lookup(codes([4, 0], [1, 0]), rows_of)
    np.testing.assert_array_equal(out["rows"], rows_of(codes([4, 0], [1, 0]))["rows"])
    assert held(cache) == {(1, 0), (3, 0), (4, 0)}
    assert (cache.hits, cache.misses, cache.evictions) == (2, 4, 1)


def test_rows_come_back_in_request_order_with_repeats():
    cache = cache_of(10)
    request = codes([5, 1], [6, 1], [5, 1], [7, 2], [6, 1])
    for _ in range(2):  # cold, then warm
        np.testing.assert_array_equal(cache.lookup(request, rows_of)["rows"], rows_of(request)["rows"])
    assert (cache.hits, cache.misses) == (3, 3)  # distinct keys: computed once, then found once


def test_a_request_larger_than_the_cache_is_answered_and_keeps_nothing_new():
    cache = cache_of(4)
    cache.lookup(codes([1, 1]), rows_of)
    big = codes(*[[k, 1] for k in range(10)])
    np.testing.assert_array_equal(cache.lookup(big, rows_of)["rows"], rows_of(big)["rows"])
    assert len(cache.index) == 1 and cache.evictions == 0


@pytest.mark.parametrize("admission", ADMISSIONS)
def test_the_budget_bounds_the_entries_under_any_traffic(admission):
    cache = cache_of(50, admission=admission)
    rng = np.random.default_rng(0)
    for _ in range(40):
        request = rng.integers(0, 200, (rng.integers(1, 50), 2))
        np.testing.assert_array_equal(cache.lookup(request, rows_of)["rows"], rows_of(request)["rows"])
        assert len(cache.index) <= cache.capacity == 50
        assert cache.nbytes <= 50 * cache.entry_bytes
    assert cache.evictions > 0


def test_key_codes_are_exact_for_ints_bools_and_float_bits():
    columns = [np.array([0, -5, 2**62], np.int64), np.array([True, False, True]), np.array([0.0, -0.0, 1e-30], np.float32)]
    coded = key_codes(columns)
    assert len(distinct(coded)[0]) == 3
    assert coded[0, 2] != coded[1, 2]  # 0.0 and -0.0 differ in their bits: two keys, never one
    for before, after in zip(columns, from_codes(coded, ["int64", "bool", "float32"])):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after.view(np.uint8), before.view(np.uint8))


def test_a_full_cache_keeps_rows_asked_for_often_over_a_row_seen_once():
    cache = cache_of(3)
    for _ in range(3):
        for key in ([1, 0], [2, 0], [3, 0]):
            cache.lookup(codes(key), rows_of)
    out = cache.lookup(codes([4, 0]), rows_of)
    np.testing.assert_array_equal(out["rows"], rows_of(codes([4, 0]))["rows"])  # answered, computed, not kept
    assert held(cache) == {(1, 0), (2, 0), (3, 0)}
    assert (cache.admitted, cache.rejected, cache.evictions) == (3, 1, 0)


def test_a_new_row_asked_for_more_often_than_the_least_recently_used_replaces_it():
    cache = cache_of(3)
    for key in ([1, 0], [2, 0], [3, 0]):  # each asked for once
        cache.lookup(codes(key), rows_of)
    cache.lookup(codes([4, 0]), rows_of)  # once, as often as any row held: not kept
    assert (4, 0) not in held(cache)
    cache.lookup(codes([4, 0]), rows_of)  # twice now: it replaces the least recently used of the rows asked for once
    assert held(cache) == {(2, 0), (3, 0), (4, 0)} and cache.evictions == 1
    assert (cache.admitted, cache.rejected) == (4, 1)


def test_rows_of_a_request_are_right_whether_kept_found_or_only_computed():
    cache = cache_of(4)
    for _ in range(2):
        cache.lookup(codes([1, 0], [2, 0], [3, 0], [4, 0]), rows_of)  # the cache full, each asked for twice
    request = codes([9, 9], [1, 0], [8, 8], [9, 9], [2, 0])  # two new keys (one repeated), two found
    np.testing.assert_array_equal(cache.lookup(request, rows_of)["rows"], rows_of(request)["rows"])
    assert cache.rejected == 2 and held(cache) == {(1, 0), (2, 0), (3, 0), (4, 0)}


def test_traffic_that_never_repeats_stops_being_copied_into_a_full_cache():
    cache = cache_of(100)
    rng = np.random.default_rng(1)
    for _ in range(60):  # 60 requests of 20 distinct, never-repeating keys: the cache is full after 5
        request = np.stack([rng.integers(1, 1 << 40, 20), np.zeros(20, np.int64)], axis=1)
        np.testing.assert_array_equal(cache.lookup(request, rows_of)["rows"], rows_of(request)["rows"])
    # 1,200 rows computed: the first 100 filled the cache; after that a new row gets in only where the sketch's
    # halving (every 10 x capacity keys counted) has let the held rows' counts fall below it
    assert cache.admitted + cache.rejected == 1_200 and cache.admitted <= 300
    assert cache.evictions == cache.admitted - 100


def test_on_skewed_traffic_larger_than_the_cache_admission_finds_more_rows_than_plain_lru():
    """Popular keys asked for again and again, among a long tail of keys asked for once or twice (Zipf, s=1.1)."""
    rng = np.random.default_rng(2)
    stream = [np.stack([rng.zipf(1.1, 50) % 100_000, np.zeros(50, np.int64)], axis=1) for _ in range(400)]
    hit_rate = {}
    for admission in ADMISSIONS:
        cache = cache_of(500, admission=admission)
        for request in stream:
            cache.lookup(request, rows_of)
        hit_rate[admission] = cache.hits / (cache.hits + cache.misses)
    assert hit_rate["frequency"] > hit_rate["all"] + 0.02, hit_rate


def test_an_unknown_admission_is_refused():
    with pytest.raises(ValueError, match="admission 'lfu' is not one of"):
        cache_of(3, admission="lfu")


def test_a_small_requests_fixed_cost_does_not_pass_for_a_per_row_cost():
    rate = RowRate(CacheWorth.WEIGHT)
    rate.add(rows=1, ms=0.17)  # Triton's warmup: one row
    for _ in range(5):
        rate.add(rows=2_000, ms=4.0)
    assert rate.per_row == pytest.approx(0.002, rel=0.1)  # a mean of per-call ratios would still say 0.1


def test_a_cache_whose_path_costs_more_than_the_whole_encoder_is_skipped_but_for_probes():
    worth = CacheWorth()
    worth.cached(rows=1_000, computed=1_000, computed_ms=1.8, path_ms=30.0, full=False)  # filling: not judged
    assert worth.use_cache()
    for encoder_ms in (9.0, 5.0, 3.0, 2.0):  # the whole encoder: 2 us a row, once its first runs (not timed) are done
        worth.whole(rows=1_000, encoder_ms=encoder_ms)
    assert worth.encoder.per_row == pytest.approx(0.002)
    for _ in range(50):  # every row computed again, and the lookups on top: 3 ms against the encoder's 2
        worth.cached(rows=1_000, computed=1_000, computed_ms=1.8, path_ms=3.0)
    choices = [worth.use_cache() for _ in range(4 * CacheWorth.PROBE_EVERY)]
    assert choices.count(True) == 4 and choices[CacheWorth.PROBE_EVERY - 1]  # one probe in PROBE_EVERY
    for _ in range(50):  # the probes now find most rows: 0.5 ms against the encoder's 2
        worth.cached(rows=1_000, computed=100, computed_ms=0.2, path_ms=0.5)
    assert all(worth.use_cache() for _ in range(CacheWorth.PROBE_EVERY))


def test_the_cached_encoder_skips_a_cache_that_does_not_pay_and_both_paths_answer_the_same():
    """Row keys that never repeat and a row graph slower than the whole encoder: once the cache is full (4 requests),
    only probes go through it; then repeated keys and a slow encoder bring the cache back."""
    delay = {"rows": 0.004, "whole": 0.0}

    def run_rows(columns):
        time.sleep(delay["rows"])
        return rows_of(np.stack([columns["k0"], columns["k1"]], axis=1))

    def run_whole(inputs):
        time.sleep(delay["whole"])
        return {"passthrough": inputs["user"], **rows_of(inputs["keys"])}

    def run_keys(inputs):
        return {"passthrough": inputs["user"], "k0": inputs["keys"][:, 0], "k1": inputs["keys"][:, 1]}

    encoder = CachedEncoder(run_keys, run_rows, [RowKey("k0", "int64"), RowKey("k1", "int64")], cache_of(200), run_whole, skip=True)
    rng = np.random.default_rng(3)
    for _ in range(3 * CacheWorth.PROBE_EVERY):
        request = {"user": np.arange(3), "keys": np.stack([rng.integers(1, 1 << 40, 50), np.ones(50, np.int64)], axis=1)}
        outputs = encoder(request)
        np.testing.assert_array_equal(outputs["rows"], rows_of(request["keys"])["rows"])
        np.testing.assert_array_equal(outputs["passthrough"], request["user"])
    assert encoder.bypassed >= 2 * CacheWorth.PROBE_EVERY - 3 and encoder.counters()["bypassed"] == encoder.bypassed
    delay.update(rows=0.0, whole=0.01)
    repeated = {"user": np.arange(3), "keys": codes(*[[k, 2] for k in range(50)])}
    for _ in range(6 * CacheWorth.PROBE_EVERY):
        np.testing.assert_array_equal(encoder(repeated)["rows"], rows_of(repeated["keys"])["rows"])
    bypassed = encoder.bypassed
    for _ in range(CacheWorth.PROBE_EVERY):
        encoder(repeated)
    assert encoder.bypassed == bypassed and encoder.cache.hits > 0  # the cache is back: every request goes through it


def test_the_key_index_answers_as_a_dict_would_through_inserts_removals_and_rebuilds():
    """Random keys (the index at its full load, so probe sequences collide) inserted, found, removed and found again,
    against a dict; enough removals that the tombstones force rebuilds."""
    rng = np.random.default_rng(4)
    index, reference = KeyIndex(300, 2), {}
    free = list(range(300))
    rebuilt = 0
    for _ in range(200):
        removing = rng.choice(list(reference.values()), min(len(reference), 40), replace=False) if reference else []
        if len(removing):
            tombstones = index.deleted
            index.remove(np.array(removing))
            rebuilt += index.deleted < tombstones + len(removing)  # the tombstones were cleared
            reference = {k: s for k, s in reference.items() if s not in set(removing)}
            free += list(removing)
        new = {tuple(k) for k in rng.integers(0, 1_000, (60, 2))} - set(reference)
        new = np.array(sorted(new)[: len(free)], np.int64).reshape(-1, 2)
        slots = np.array([free.pop() for _ in range(len(new))], np.int64)
        index.insert(new, slots)
        reference.update({tuple(k): int(s) for k, s in zip(new, slots)})
        asked = np.concatenate([new, rng.integers(0, 1_000, (50, 2))])
        np.testing.assert_array_equal(index.find(asked), [reference.get(tuple(k), -1) for k in asked])
        assert len(index) == len(reference)
    assert rebuilt > 0


def shared_cache(entries: int, name: str, server: int, key_width: int = 2) -> RowCache:
    budget = entries * (SPEC["rows"].nbytes + 8 * key_width + ENTRY_OVERHEAD_BYTES)
    return RowCache(budget, SPEC, key_width, shared=SharedRegion(name, budget + SHARED_SLACK_BYTES, server))


def hammer(name: str, seed: int, failures) -> None:
    """In a child process: random requests over keys another process asks for too, each answer checked."""
    cache = shared_cache(150, name, server=os.getppid())
    rng = np.random.default_rng(seed)
    for _ in range(300):
        request = rng.integers(0, 400, (rng.integers(1, 60), 2))
        if not np.array_equal(cache.lookup(request, rows_of)["rows"], rows_of(request)["rows"]):
            failures.put(f"process {seed}: a wrong row")
    failures.put(("counters", cache.hits, cache.misses, cache.admitted, cache.evictions))


@pytest.fixture
def region_name():
    yield f"test-{time.monotonic_ns()}"
    for stale in region_files(os.getpid()):
        os.unlink(stale)


def test_a_shared_region_is_resident_from_the_start_so_no_row_written_later_faults_a_page_in(region_name):
    """Made, and opened again (as the second instance of a served model opens it): all its pages are mapped in the
    process before any row is written, and writing every page afterwards faults none in."""
    nbytes, regions = 32 << 20, []  # the made one kept open: the second opening finds it
    for opening in ("made", "opened"):
        shmem_before = status_bytes(os.getpid())["RssShmem"]
        region = SharedRegion(region_name, nbytes, server=os.getpid())
        regions.append(region)
        assert region.fresh == (opening == "made")
        assert status_bytes(os.getpid())["RssShmem"] - shmem_before >= nbytes, opening
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        np.frombuffer(region.memory, np.uint8)[::4096] = 1
        assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before < 16, opening  # not nbytes / 4096


def test_a_private_table_is_its_processs_own_memory_where_huge_pages_can_back_it():
    """A cache one process holds: its rows become private anonymous memory as they are written (RssAnon), the kind
    transparent huge pages back on madvise; not shmem, which Python's default anonymous mapping is, whose huge pages
    follow shmem_enabled and which /proc counts as shared."""
    nbytes = 32 << 20
    before = status_bytes(os.getpid())
    table = Arena().table(nbytes // 1024, RowSpec("float32", (256,)))
    table[:] = 1.0
    after = status_bytes(os.getpid())
    assert after["RssAnon"] - before["RssAnon"] >= nbytes
    assert after["RssShmem"] - before["RssShmem"] < nbytes // 16


def test_processes_sharing_a_cache_find_each_others_rows_and_every_answer_is_exact(region_name):
    """Two processes (as two instances of a served model: children of one parent) on one cache smaller than their keys:
    each finds rows the other computed, every answer is the row graph's, and afterwards every held row is its key's."""
    context = multiprocessing.get_context("fork")
    name, failures = region_name, context.Queue()
    first = shared_cache(150, name, server=os.getpid())  # made here, as the first instance would; the children open it
    first.lookup(codes([1, 1], [2, 2]), rows_of)
    children = [context.Process(target=hammer, args=(name, seed, failures)) for seed in (1, 2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    results = [failures.get(timeout=5) for _ in children]
    assert all(isinstance(r, tuple) for r in results), results
    assert all(r[0] == "counters" for r in results)
    assert first.shared.fresh and not shared_cache(150, name, os.getpid()).shared.fresh  # a later one opens the same region
    assert len(first.index) <= first.capacity
    live = np.flatnonzero(first.index.live)
    np.testing.assert_array_equal(first.tables["rows"][live], rows_of(first.index.codes[live])["rows"])
    # what each child computed and kept, less what was evicted, is what the one cache holds
    assert len(first.index) == 2 + sum(r[3] - r[4] for r in results)


def die_changing(name: str) -> None:
    cache = shared_cache(10, name, server=os.getppid())
    with cache._locked():
        cache.index.insert(codes([9, 9]), np.array([0]))  # half a change: indexed, its row never written
        os._exit(1)


def test_a_process_that_dies_changing_the_cache_leaves_it_emptied_not_half_changed(region_name):
    context = multiprocessing.get_context("fork")
    name = region_name
    cache = shared_cache(10, name, server=os.getpid())
    cache.lookup(codes([1, 1], [2, 2]), rows_of)
    child = context.Process(target=die_changing, args=(name,))
    child.start()
    child.join(30)
    assert child.exitcode == 1 and cache.changing == 1
    out = cache.lookup(codes([9, 9], [1, 1]), rows_of)  # the next to take the lock empties the cache first
    np.testing.assert_array_equal(out["rows"], rows_of(codes([9, 9], [1, 1]))["rows"])
    assert cache.changing == 0 and held(cache) == {(9, 9), (1, 1)} and cache.evictions == 3


# A stand-in multiset encoder: one item key a row, a one-float "bias" output (the multiplicity) and three-float rows.
MULTISET_SPECS = {"bias": RowSpec("float32", ()), "rows": RowSpec("float32", (3,))}
REPEATED_ITEMS = np.array([7, 5, 7, 7, 9, 5], np.int64)  # 5 twice, 7 three times, 9 once


def multiset_encoder(cache: RowCache | None, skip: bool = False) -> CachedEncoder:
    def run_rows(columns):
        keys = columns["k0"].astype(np.float32)
        return {"bias": keys / 10, "rows": np.stack([keys, -keys, 2 * keys], axis=1)}

    def run_keys(inputs):
        return {"user": inputs["user"], "k0": inputs["items"]}

    return CachedEncoder(run_keys, run_rows, [RowKey("k0", "int64")], cache, multiplicity="bias", skip=skip)


def assert_each_distinct_row_once(out: dict) -> None:
    """REPEATED_ITEMS' rows as the scorer gets them: one per distinct key, in key order, the bias raised by log(count)."""
    np.testing.assert_array_equal(out["rows"], [[5, -5, 10], [7, -7, 14], [9, -9, 18]])
    np.testing.assert_allclose(out["bias"], [0.5 + np.log(2), 0.7 + np.log(3), 0.9], rtol=1e-6)


@pytest.mark.parametrize("with_cache", [True, False])
def test_with_a_multiplicity_repeated_rows_come_once_and_the_count_is_added_as_its_log(with_cache):
    """What the scorer gets where it reads the history as a multiset: one row per distinct key, in key order, and the
    multiplicity output raised by log(count), on a miss and on a hit alike."""
    encoder = multiset_encoder(RowCache(1 << 16, MULTISET_SPECS, 1) if with_cache else None)
    request = {"user": np.arange(2), "items": REPEATED_ITEMS}
    for _ in range(2):  # computed, then found
        out = encoder(request)
        assert_each_distinct_row_once(out)
        np.testing.assert_array_equal(out["user"], request["user"])
    if with_cache:
        assert encoder.counters()["hits"] == 3 and encoder.counters()["misses"] == 3


def test_with_a_multiplicity_a_request_that_skips_the_cache_still_sends_each_distinct_row_once():
    """A full cache that does not pay is skipped by the row graph on the request's distinct keys (no whole encoder to
    run): the same rows and log counts the cache's path gives, and the cache neither read nor changed."""
    cache = RowCache(8 * entry_bytes(sum(s.nbytes for s in MULTISET_SPECS.values()), 1), MULTISET_SPECS, 1)
    encoder = multiset_encoder(cache, skip=True)
    encoder({"user": np.arange(2), "items": np.arange(100, 108, dtype=np.int64)})  # fills the cache's 8 slots
    encoder.worth.cached(rows=6, computed=6, computed_ms=1.0, path_ms=1_000.0)  # measured: the full cache does not pay
    held = cache.counters()
    out = encoder({"user": np.arange(2), "items": REPEATED_ITEMS})
    assert encoder.bypassed == 1 and cache.counters() == held
    assert_each_distinct_row_once(out)


def test_skipping_the_cache_without_a_multiplicity_needs_the_whole_encoder():
    with pytest.raises(ValueError, match="run_encoder"):
        CachedEncoder(lambda inputs: inputs, lambda columns: columns, [RowKey("k0", "int64")], cache_of(8), skip=True)
