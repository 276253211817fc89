"""The row cache's own rules: least recently used rows go first, the budget holds, keys are exact."""

import numpy as np

from compiler.runtime.row_cache import ENTRY_OVERHEAD_BYTES, RowCache, RowSpec, distinct, from_codes, key_codes

SPEC = {"rows": RowSpec("float32", (3,))}


def rows_of(codes: np.ndarray) -> dict:
    """A stand-in row graph whose rows are a known function of the key, so every answer can be checked."""
    return {"rows": np.stack([codes.sum(axis=1), codes[:, 0], -codes[:, -1]], axis=1).astype(np.float32)}


def cache_of(entries: int, key_width: int = 2) -> RowCache:
    return RowCache(entries * (SPEC["rows"].nbytes + 8 * key_width + ENTRY_OVERHEAD_BYTES), SPEC, key_width)


def codes(*keys) -> np.ndarray:
    return np.array(keys, dtype=np.int64).reshape(len(keys), -1)


def test_the_least_recently_used_row_is_evicted_first():
    cache = cache_of(3)
    for key in ([1, 0], [2, 0], [3, 0]):
        cache.lookup(codes(key), rows_of)
    cache.lookup(codes([1, 0]), rows_of)  # 1 is now the most recently used; 2 the least
    out = cache.lookup(codes([4, 0], [1, 0]), rows_of)
    np.testing.assert_array_equal(out["rows"], rows_of(codes([4, 0], [1, 0]))["rows"])
    held = {tuple(np.frombuffer(k, np.int64)) for k in cache.index}
    assert held == {(1, 0), (3, 0), (4, 0)}
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


def test_the_budget_bounds_the_entries_under_any_traffic():
    cache = cache_of(50)
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
