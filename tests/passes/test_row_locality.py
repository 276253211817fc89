"""The history row cache: row locality read from the graph, the key/row graph split, and the cached encoder's
scores against PyTorch on the traffic it is for (the same user coming back, users sharing items, padding,
eviction, concurrent requests, a restart)."""

import threading
from dataclasses import replace

import numpy as np
import pytest

from compiler.build import cut_model
from compiler.core.contract import stca_contract
from compiler.load.subject import Source, StcaSubject
from compiler.passes import row_locality
from compiler.passes.cut_dtype import narrow_cut
from compiler.passes.partition import split
from compiler.precision import calibrate
from compiler.precision.convert import PrecisionConfig, convert
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import ENTRY_OVERHEAD_BYTES
from compiler.stca.data import RepeatedUsers, repeated_user_requests, sample_requests
from compiler.verify.gates import THRESHOLDS
from tests.models import HistorySelfAttention, PositionalHistory, din_model, history_model, stca, two_tower_model

FP32_GATE = THRESHOLDS["fp32"].max_abs_error


@pytest.fixture(scope="module")
def tiny():
    """The tiny STCA model, its split, its row-cache row_graphs and ONNX Runtime sessions of the graphs."""
    model, _ = stca("tiny")
    _, parts = cut_model(StcaSubject(model, Source("seeded")))
    row_graphs = row_locality.row_graphs(parts.encoder)
    graphs = {"keys": OrtGraph(row_graphs.key_graph), "rows": OrtGraph(row_graphs.row_graph), "scorer": OrtGraph(parts.scorer),
              "encoder": OrtGraph(parts.encoder)}
    return model, parts, row_graphs, graphs


def cached_encoder(row_graphs, graphs, rows: int = 1_000_000):
    """A cached encoder whose cache holds `rows` rows."""
    return row_graphs.encoder(graphs["keys"].run, graphs["rows"].run, rows * (row_graphs.bytes_per_row + 8 * len(row_graphs.keys) + ENTRY_OVERHEAD_BYTES))


def scores(graphs, encoder, request):
    return graphs["scorer"].run({**request, **encoder(request)})["scores"]


def test_stca_rows_are_keyed_on_per_row_integers_not_on_raw_ages_or_ids(tiny):
    _, parts, row_graphs, _ = tiny
    per_row = {t.name for t in parts.cut.tensors if t.shape[:1] == ("L",)}
    assert set(row_graphs.cached) == per_row  # every cut tensor with rows along L is cached ...
    assert set(row_graphs.passthrough) == {t.name for t in parts.cut.tensors} - per_row  # ... the rest (user tokens) is not
    assert all(np.dtype(k.dtype).kind in "biu" for k in row_graphs.keys)
    sources = {k.source for k in row_graphs.keys}
    assert "history_age_s" not in sources  # the bucket, which survives a request later; not the seconds
    assert "history_item_ids" not in sources  # the hashed table row, which is narrower than the raw id
    assert "history_actions" in sources


def test_the_same_bucket_is_the_same_row_and_a_crossed_bucket_is_recomputed(tiny):
    model, _, row_graphs, graphs = tiny
    request = next(sample_requests(model.config, [300], seed=4, n_candidates=8)).inputs
    rng = np.random.default_rng(0)
    bucket = rng.integers(3, 20, 300)
    at = lambda u: (2.0**bucket - 1 + u * 2.0**bucket).astype(np.float32)  # noqa: E731  (u in [0, 1): inside bucket)
    encoder = cached_encoder(row_graphs, graphs)
    first = {**request, "history_age_s": at(rng.uniform(0.0, 0.4, 300))}
    encoder(first)
    later = {**request, "history_age_s": at(rng.uniform(0.6, 0.9, 300))}  # every age moved, no bucket did
    misses = encoder.cache.misses
    assert np.abs(scores(graphs, encoder, later) - model.score(later)).max() <= FP32_GATE
    assert encoder.cache.misses == misses  # all rows from the cache
    crossed = {**later, "history_age_s": later["history_age_s"].copy()}
    crossed["history_age_s"][:10] = 1.5 * 2.0 ** (bucket[:10] + 1) - 1  # ten items aged into the middle of the next bucket
    assert np.abs(scores(graphs, encoder, crossed) - model.score(crossed)).max() <= FP32_GATE
    assert 1 <= encoder.cache.misses - misses <= 10


def test_cached_scores_match_pytorch_on_repeated_users_sharing_items_with_padding(tiny):
    model, _, row_graphs, graphs = tiny
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=3, visits=4), seed=9, n_candidates=16)
    encoder = cached_encoder(row_graphs, graphs)
    hits_at_second_user = None
    for k, request in enumerate(traffic):  # visit-major: each user's history grows and ages between visits
        if k == 1:
            hits_at_second_user = encoder.cache.hits
        assert np.abs(scores(graphs, encoder, request) - model.score(request)).max() <= FP32_GATE, f"request {k}"
        if k == 1:
            assert encoder.cache.hits > hits_at_second_user  # a new user's first request finds rows another user left
    padded = stca_contract(model.config).left_pad(traffic[-1], 50)
    assert np.abs(scores(graphs, encoder, padded) - model.score(padded)).max() <= FP32_GATE
    assert encoder.cache.hits > encoder.cache.misses  # the traffic is what the cache is for


def test_eviction_under_a_tiny_budget_and_a_restart_stay_exact(tiny):
    model, _, row_graphs, graphs = tiny
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=2, visits=3), seed=10, n_candidates=8)
    small = [{k: v[-200:] if k.startswith("history_") else v for k, v in r.items()} for r in traffic]
    encoder = cached_encoder(row_graphs, graphs, rows=300)  # one user's 200 rows fit, two users' do not
    for request in small:
        assert np.abs(scores(graphs, encoder, request) - model.score(request)).max() <= FP32_GATE
    assert encoder.cache.evictions > 0
    assert len(encoder.cache.index) <= 300
    restarted = cached_encoder(row_graphs, graphs)  # a new process: an empty cache
    assert np.abs(scores(graphs, restarted, small[-1]) - model.score(small[-1])).max() <= FP32_GATE
    assert restarted.cache.hits == 0 and restarted.cache.misses > 0


def test_concurrent_requests_on_one_cache_get_their_own_rows(tiny):
    model, _, row_graphs, graphs = tiny
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=4, visits=2), seed=11, n_candidates=8)
    expected = [graphs["encoder"].run(r) for r in traffic]
    encoder = cached_encoder(row_graphs, graphs, rows=3_000)  # small enough that threads evict each other's rows
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(3):
                results[k] = encoder(traffic[k])
        except Exception as e:  # noqa: BLE001  (reported below, with the request)
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(traffic))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, outputs in results.items():
        for name, value in outputs.items():
            np.testing.assert_allclose(value, expected[k][name], rtol=1e-5, atol=1e-5, err_msg=f"request {k}, {name}")


def test_a_din_style_model_is_row_local_and_its_cache_is_confirmed():
    model, request_inputs = din_model()
    parts = split(model, request_inputs)
    row_graphs = row_locality.row_graphs(parts.encoder)
    assert [np.dtype(k.dtype).kind for k in row_graphs.keys] == ["i"]  # the hashed item row
    requests = [{"history_item_ids": np.arange(1, L + 1, dtype=np.int64) * 7} for L in (1, 40, 900)]
    worst = row_locality.confirm(row_graphs, parts.encoder, requests, OrtGraph)
    assert max(worst.values()) <= 1e-5


@pytest.mark.parametrize("make, why", [
    (two_tower_model, "reduces over L"),  # the history is pooled into one vector
    (lambda: history_model(HistorySelfAttention), "MatMul"),  # each row attends to every other row
    (lambda: history_model(PositionalHistory), "derived from L itself"),  # a row depends on where it sits
])
def test_a_model_whose_rows_mix_gets_no_cache_and_the_reason(make, why):
    model, request_inputs = make()
    parts = split(model, request_inputs)
    with pytest.raises(row_locality.NotRowLocal, match=why):
        row_locality.row_graphs(parts.encoder)


def test_a_cut_narrowed_to_fp16_is_cached_in_fp16(tiny):
    model, parts, _, graphs = tiny
    samples = [graphs["encoder"].run(r.inputs) for r in sample_requests(model.config, [1, 300], seed=2, n_candidates=1)]
    narrowed = narrow_cut(parts, samples)  # its casts carry no shapes: the row_graphs must not need them
    row_graphs = row_locality.row_graphs(narrowed.split.encoder)
    cached_narrow = [name for name in narrowed.narrowed if name in row_graphs.cached]
    assert cached_narrow and {row_graphs.row_specs[name].dtype for name in cached_narrow} == {"float16"}
    requests = [r.inputs for r in sample_requests(model.config, [5, 700], seed=3, n_candidates=1)]
    assert max(row_locality.confirm(row_graphs, narrowed.split.encoder, requests, OrtGraph).values()) <= 2e-3


@pytest.mark.parametrize("form", ["cpu", "tensorrt"])
def test_an_int8_encoder_is_row_local_with_its_weights_dequantized_in_the_row_graph(tiny, tmp_path, form):
    model, parts, _, _ = tiny
    calibration = calibrate.generate(tmp_path / "set", model.config, count=4)
    encoder = convert(parts, PrecisionConfig("int8"), calibration, None, form).split.encoder
    row_graphs = row_locality.row_graphs(encoder)  # static scales: quantizing a row reads nothing of the other rows
    assert any(n.op_type == "DequantizeLinear" for n in row_graphs.row_graph.graph.node)
    requests = [r.inputs for r in sample_requests(model.config, [1, 64, 700], seed=6, n_candidates=1)]
    assert max(row_locality.confirm(row_graphs, encoder, requests, OrtGraph).values()) <= 1e-5


def test_the_build_records_and_reports_why_a_model_gets_no_cache(tmp_path):
    import onnx

    from compiler.build import _row_locality
    from compiler.load.user_model import UserModelSpec, load_user_model
    from compiler.repository.deployment import EmitConfig, resolve_deployment
    from compiler.repository.report import history_cache_lines

    model, request_inputs = history_model(HistorySelfAttention)
    onnx.save(model, str(tmp_path / "model.onnx"))
    subject = load_user_model(UserModelSpec(onnx=tmp_path / "model.onnx", request_inputs=tuple(request_inputs)))
    halves = split(model, request_inputs)
    row_graphs, record = _row_locality(halves.encoder, halves.scorer, subject, resolve_deployment(EmitConfig(), "python"))
    assert row_graphs is None and not record.row_local and not record.served
    assert "MatMul" in record.why
    assert history_cache_lines(record)[-1].startswith("None: ") and "MatMul" in history_cache_lines(record)[-1]


@pytest.mark.parametrize("multiplicity", [None, "key_bias"])
def test_a_request_that_skips_the_cache_gets_the_same_scores(tiny, multiplicity):
    """A request that skips a full cache, answered by the whole encoder (every row) or, where each distinct row is sent
    once, by the row graph on its distinct keys, scores as PyTorch does."""
    model, _, row_graphs, graphs = tiny
    row_graphs = replace(row_graphs, multiplicity=multiplicity)
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=3, visits=2), seed=12, n_candidates=8)
    encoder = row_graphs.encoder(graphs["keys"].run, graphs["rows"].run, 64 * (row_graphs.bytes_per_row + 8 * len(row_graphs.keys) + ENTRY_OVERHEAD_BYTES),
                                 run_encoder=graphs["encoder"].run, skip=True)
    for request in traffic[:2]:  # short histories: room for the next
        encoder({k: v[-20:] if k.startswith("history_") else v for k, v in request.items()})
    assert encoder.cache.capacity - encoder.cache.used >= 20 and encoder.bypassed == 0  # a cache with room is never skipped
    for request in traffic:  # until it has no room for a request
        encoder({k: v[-20:] if k.startswith("history_") else v for k, v in request.items()})
    assert encoder.cache.capacity - encoder.cache.used < 20
    encoder.worth.cached(rows=100, computed=100, computed_ms=1.0, path_ms=1_000.0)  # measured: the full cache does not pay
    bypassed = encoder.bypassed
    for request in traffic:
        assert np.abs(scores(graphs, encoder, request) - model.score(request)).max() <= FP32_GATE
    assert encoder.bypassed == bypassed + len(traffic)
