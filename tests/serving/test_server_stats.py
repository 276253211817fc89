"""Where a request's time goes: the arithmetic of per-model stage times between two statistics snapshots, and the
parsing of Triton's statistics JSON and Prometheus metrics text.

No tritonserver runs here (tests/e2e/test_tune.py reads a real one). Where a function only takes a URL, a tiny
http.server on a free 127.0.0.1 port serves a hand-written page in Triton's shape and is always shut down: a
stand-in for Triton's /v2/models/stats and /metrics endpoints, enough to test the parsers, not the server.
"""

import contextlib
import json
from http.server import BaseHTTPRequestHandler

import pytest

from compiler.core.names import ENSEMBLE, FUSED, INDUCTOR, SCORER, SPLIT
from compiler.runtime.inductor import COMPILE_SECONDS_METRIC, COMPILED_GRAPHS_METRIC
from compiler.serving import server_stats
from compiler.serving.server_stats import StageTimes
from tests.serving.local_http import local_http


@contextlib.contextmanager
def stand_in(pages: dict):
    """An HTTP server on a free 127.0.0.1 port answering GET `path` with pages[path] (a str, or a list of strs served one
    per request, the last repeated). Yields (host:port, the paths requested); always shut down."""
    requested = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's spelling)
            requested.append(self.path)
            page = pages.get(self.path)
            if isinstance(page, list):
                page = page[min(requested.count(self.path), len(page)) - 1]
            body = (page or "not found").encode()
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with local_http(Handler) as address:
        yield address, requested


def counts(success: int, queue: int, compute_input: int, compute_infer: int, compute_output: int) -> dict:
    """One model's entry of a snapshot: requests answered and cumulative ns per stage."""
    return {"success": success, "queue": queue, "compute_input": compute_input, "compute_infer": compute_infer,
            "compute_output": compute_output}


def test_between_gives_each_models_mean_ms_per_stage_over_the_requests_it_answered():
    before = {ENSEMBLE: counts(10, 5_000_000, 1_000_000, 40_000_000, 2_000_000),
              SPLIT: counts(10, 2_000_000, 3_000_000, 30_000_000, 1_000_000)}
    after = {ENSEMBLE: counts(14, 7_000_000, 2_000_000, 72_000_000, 2_500_000),
             SPLIT: counts(14, 2_400_000, 3_200_000, 54_000_000, 1_800_000)}
    times = server_stats.between(before, after, [ENSEMBLE, SPLIT])
    assert [(t.model, t.requests) for t in times] == [(ENSEMBLE, 4), (SPLIT, 4)]
    ensemble, split = times
    # stca: 2.0 ms queued, 1.0 ms in, 32.0 ms infer, 0.5 ms out, over 4 requests
    assert (ensemble.queue_ms, ensemble.compute_input_ms, ensemble.compute_infer_ms, ensemble.compute_output_ms) == \
        pytest.approx((0.5, 0.25, 8.0, 0.125))
    # stca_split: 0.4, 0.2, 24.0 and 0.8 ms over 4 requests
    assert (split.queue_ms, split.compute_input_ms, split.compute_infer_ms, split.compute_output_ms) == \
        pytest.approx((0.1, 0.05, 6.0, 0.2))


def test_the_total_of_stage_times_is_the_sum_of_its_four_stages():
    assert StageTimes("m", 3, 0.5, 0.25, 8.0, 0.125).total_ms == pytest.approx(8.875)


def test_between_follows_the_order_of_the_models_asked_for():
    before = {SCORER: counts(1, 0, 0, 0, 0), FUSED: counts(1, 0, 0, 0, 0)}
    after = {SCORER: counts(2, 0, 0, 1_000_000, 0), FUSED: counts(3, 0, 0, 4_000_000, 0)}
    assert [t.model for t in server_stats.between(before, after, [FUSED, SCORER])] == [FUSED, SCORER]


def test_between_leaves_out_a_model_that_answered_nothing_or_never_ran():
    before = {SPLIT: counts(5, 1, 1, 1, 1)}
    after = {SPLIT: counts(5, 9, 9, 9, 9)}  # nanoseconds moved but no request succeeded: no mean to take
    assert server_stats.between(before, after, [SPLIT, FUSED]) == []  # FUSED: in neither snapshot


def test_between_counts_a_model_first_seen_after_the_first_snapshot_from_zero():
    after = {FUSED: counts(2, 1_000_000, 0, 6_000_000, 0)}
    (fused,) = server_stats.between({}, after, [FUSED])
    assert (fused.requests, fused.queue_ms, fused.compute_infer_ms) == (2, pytest.approx(0.5), pytest.approx(3.0))


def stats_page(models: list[tuple[str, str, int, list[int]]]) -> str:
    """Triton's GET /v2/models/stats JSON: per (model, version, successes, ns of queue/input/infer/output)."""
    def stat(count, ns):
        return {"count": count, "ns": ns}

    return json.dumps({"model_stats": [
        {"name": name, "version": version, "last_inference": 1_700_000_000_000, "inference_count": success,
         "execution_count": success,
         "inference_stats": {"success": stat(success, sum(ns)), "fail": stat(0, 0), "queue": stat(success, ns[0]),
                             "compute_input": stat(success, ns[1]), "compute_infer": stat(success, ns[2]),
                             "compute_output": stat(success, ns[3]), "cache_hit": stat(0, 0), "cache_miss": stat(0, 0)},
         "batch_stats": []}
        for name, version, success, ns in models]})


def test_snapshot_reads_successes_and_stage_nanoseconds_and_adds_up_versions_of_one_model():
    page = stats_page([(SPLIT, "1", 6, [10, 20, 300, 40]), (SPLIT, "2", 4, [1, 2, 30, 4]), (FUSED, "1", 3, [5, 6, 7, 8])])
    with stand_in({"/v2/models/stats": page}) as (url, requested):
        snap = server_stats.snapshot(url)
    assert requested == ["/v2/models/stats"]
    assert snap == {SPLIT: counts(10, 11, 22, 330, 44), FUSED: counts(3, 5, 6, 7, 8)}


def test_answered_is_a_models_successes_over_its_versions_and_zero_for_a_model_the_server_lacks():
    page = stats_page([(SPLIT, "1", 6, [10, 20, 300, 40]), (SPLIT, "2", 4, [1, 2, 30, 4]), (FUSED, "1", 3, [5, 6, 7, 8])])
    with stand_in({"/v2/models/stats": page}) as (url, _):
        assert (server_stats.answered(url, SPLIT), server_stats.answered(url, FUSED), server_stats.answered(url, ENSEMBLE)) == (10, 3, 0)


def test_settled_snapshot_waits_until_every_named_model_has_answered_as_many_requests():
    before = {ENSEMBLE: counts(0, 0, 0, 0, 0), SPLIT: counts(0, 0, 0, 0, 0)}
    unsettled = stats_page([(ENSEMBLE, "1", 4, [0, 0, 4_000_000, 0]), (SPLIT, "1", 3, [0, 0, 3_000_000, 0])])
    settled = stats_page([(ENSEMBLE, "1", 4, [0, 0, 4_000_000, 0]), (SPLIT, "1", 4, [0, 0, 4_000_000, 0])])
    with stand_in({"/v2/models/stats": [unsettled, unsettled, settled]}) as (url, requested):
        snap = server_stats.settled_snapshot(url, before, [ENSEMBLE, SPLIT], timeout_s=30)
        times = server_stats.since(url, before, [ENSEMBLE, SPLIT])  # the page stays settled
    assert len(requested) == 4  # three until it settled, one for `since`
    assert snap[SPLIT]["success"] == snap[ENSEMBLE]["success"] == 4
    assert [(t.model, t.requests, t.compute_infer_ms) for t in times] == [(ENSEMBLE, 4, 1.0), (SPLIT, 4, 1.0)]


def test_settled_snapshot_returns_the_last_snapshot_as_it_is_after_its_timeout():
    unsettled = stats_page([(ENSEMBLE, "1", 4, [0, 0, 0, 0]), (SPLIT, "1", 3, [0, 0, 0, 0])])
    with stand_in({"/v2/models/stats": unsettled}) as (url, requested):
        snap = server_stats.settled_snapshot(url, {}, [ENSEMBLE, SPLIT], timeout_s=0.05)
    assert (snap[ENSEMBLE]["success"], snap[SPLIT]["success"]) == (4, 3)
    assert len(requested) >= 2  # it asked again before giving up


# A hand-written Triton /metrics page: two stca_split instances hold row caches, the history encoder of another
# repository one; HELP/TYPE comments and Triton's own metrics sit between them.
METRICS = """\
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="stca_split",version="1"} 200
# HELP stca_history_cache_hits Distinct history row keys found in the row cache
# TYPE stca_history_cache_hits counter
stca_history_cache_hits{instance="stca_split_0_0",model="stca_split",weights="0123456789ab"} 120
stca_history_cache_hits{instance="stca_split_0_1",model="stca_split",weights="0123456789ab"} 30
stca_history_cache_hits{instance="stca_history_encoder_0_0",model="stca_history_encoder",weights="ba9876543210"} 7
# HELP stca_history_cache_misses Distinct history row keys computed by the row graph
# TYPE stca_history_cache_misses counter
stca_history_cache_misses{instance="stca_split_0_0",model="stca_split",weights="0123456789ab"} 40
stca_history_cache_misses{instance="stca_split_0_1",model="stca_split",weights="0123456789ab"} 10
# HELP stca_history_cache_bytes Bytes the row cache holds, rows, keys and index
# TYPE stca_history_cache_bytes gauge
stca_history_cache_bytes{instance="stca_split_0_0",model="stca_split",weights="0123456789ab"} 1048576
stca_history_cache_bytes{instance="stca_split_0_1",model="stca_split",weights="0123456789ab"} 5.24288e+05
# HELP stca_split_half_ms Milliseconds stca_split spent in each half
# TYPE stca_split_half_ms counter
stca_split_half_ms{half="encoder",instance="stca_split_0_0",model="stca_split"} 250.5
stca_split_half_ms{half="scorer",instance="stca_split_0_0",model="stca_split"} 100.25
stca_split_half_ms{half="encoder",instance="stca_split_0_1",model="stca_split"} 49.5
stca_split_half_ms{half="scorer",instance="stca_split_0_1",model="stca_split"} 0.75
# HELP stca_torch_compile_seconds Seconds the torch.compile warm-up took at load, compiling included
# TYPE stca_torch_compile_seconds gauge
stca_torch_compile_seconds{instance="stca_inductor_0_0",model="stca_inductor"} 31.5
stca_torch_compile_seconds{instance="stca_inductor_0_1",model="stca_inductor"} 6.25
# HELP stca_torch_compiled_graphs Graphs torch.compile has compiled, at warm-up and since
# TYPE stca_torch_compiled_graphs gauge
stca_torch_compiled_graphs{instance="stca_inductor_0_0",model="stca_inductor"} 2
stca_torch_compiled_graphs{instance="stca_inductor_0_1",model="stca_inductor"} 3
"""

NO_STCA_METRICS = """\
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="stca_fused",version="1"} 12
"""


@pytest.fixture(scope="module")
def metrics_url():
    with stand_in({"/metrics": METRICS, "/plain": NO_STCA_METRICS}) as (host, _):
        yield f"http://{host}"


def test_history_cache_counters_sum_a_models_instances_and_ignore_other_models(metrics_url):
    counters = server_stats.history_cache_counters(f"{metrics_url}/metrics", SPLIT)
    # hits 120 + 30, misses 40 + 10; bytes, a gauge of the one cache the instances share: the larger report, 1 MiB
    assert counters == {"hits": 150.0, "misses": 50.0, "bytes": 1_048_576.0}
    assert server_stats.history_cache_counters(f"{metrics_url}/metrics", "stca_history_encoder") == {"hits": 7.0}


def test_history_cache_counters_match_the_model_label_exactly_not_as_a_prefix(metrics_url):
    assert server_stats.history_cache_counters(f"{metrics_url}/metrics", ENSEMBLE) == {}  # "stca" is not "stca_split"


def test_split_half_ms_sums_each_half_over_the_instances(metrics_url):
    # encoder 250.5 + 49.5, scorer 100.25 + 0.75
    assert server_stats.split_half_ms(f"{metrics_url}/metrics") == {"encoder": 300.0, "scorer": 101.0}


def test_halves_since_is_each_halfs_milliseconds_since_an_earlier_reading_over_the_requests(metrics_url):
    # now: encoder 250.5 + 49.5 = 300, scorer 100.25 + 0.75 = 101
    url = f"{metrics_url}/metrics"
    assert server_stats.halves_since(url, {"encoder": 100.0, "scorer": 1.0}, 4) == {"encoder": 50.0, "scorer": 25.0}
    assert server_stats.halves_since(url, {}, 2) == {"encoder": 150.0, "scorer": 50.5}  # the first reading of a server


def test_a_server_without_row_caches_or_stca_split_reports_empty_counters(metrics_url):
    assert server_stats.history_cache_counters(f"{metrics_url}/plain", SPLIT) == {}
    assert server_stats.split_half_ms(f"{metrics_url}/plain") == {}
    assert server_stats.model_gauge(f"{metrics_url}/plain", COMPILE_SECONDS_METRIC) == {}


def test_a_models_gauge_is_the_largest_over_its_instances(metrics_url):
    assert server_stats.model_gauge(f"{metrics_url}/metrics", COMPILE_SECONDS_METRIC) == {INDUCTOR: 31.5}
    assert server_stats.model_gauge(f"{metrics_url}/metrics", COMPILED_GRAPHS_METRIC) == {INDUCTOR: 3.0}
    assert server_stats.model_gauge(f"{metrics_url}/metrics", "stca_torch_compile") == {}  # the whole name, not a prefix
