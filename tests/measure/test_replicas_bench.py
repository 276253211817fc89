"""benchmarks/replicas.py's account of a replica's death, from hand-made timelines (no server)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from compiler.measure.bench_repeated import Driven
from compiler.measure.docs_tables import replicas as replicas_table

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # replicas.py imports cache_sim.py beside it; benchmarks/ is not a package
    try:
        spec = importlib.util.spec_from_file_location("replicas_bench", BENCHMARKS / "replicas.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


# Two client threads; the kill at 1.1 s finds request 2 in flight (sent at 1.0, answered 0.9 s later, at 1.9 s).
DRIVEN = Driven(seconds=2.2, sent_s=[0.0, 0.05, 0.5, 1.0, 1.2, 1.35, 2.0],
                latencies_ms=[100.0, 400.0, 100.0, 900.0, 100.0, 150.0, 200.0], midway_s=1.1)
# nginx's error.log from such a run (its own wording): the in-flight request the dead replica held, then two
# connections its closed port refused; a line of another kind is not a re-sent request
NGINX_ERRORS = """\
2026/12/07 02:10:01 [error] 71#71: *9 upstream prematurely closed connection while reading response header from upstream, client: 127.0.0.1
2026/12/07 02:10:01 [error] 71#71: *11 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1
2026/12/07 02:10:02 [warn] 71#71: *12 upstream server temporarily disabled while connecting to upstream, client: 127.0.0.1
2026/12/07 02:10:09 [error] 71#71: *15 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1
"""


def test_the_failover_counts_the_requests_in_flight_at_the_kill_and_when_the_last_was_answered(bench):
    lost = bench.failover(DRIVEN, NGINX_ERRORS)
    assert lost["in_flight_at_kill"] == 1 and lost["longest_in_flight_ms"] == 900.0
    assert lost["recovery_s"] == pytest.approx(1.9 - 1.1)
    assert lost["resent"] == {"connect": 2, "send": 0, "answer": 1}
    assert lost["p50_ms_before"] == pytest.approx(100.0)  # the three answered before the kill: 100, 400, 100
    assert lost["p50_ms_after"] == pytest.approx(150.0)  # the three sent after it: 100, 150, 200
    assert lost["timeline"]["latency_ms"] == DRIVEN.latencies_ms


def test_a_kill_between_requests_costs_nothing_in_flight(bench):
    idle = Driven(seconds=1.0, sent_s=[0.0, 0.6], latencies_ms=[100.0, 100.0], midway_s=0.5)
    lost = bench.failover(idle, "")
    assert lost["in_flight_at_kill"] == 0 and lost["recovery_s"] == 0.0
    assert lost["resent"] == {"connect": 0, "send": 0, "answer": 0}


def test_the_replicas_table_says_the_recovery_time(bench):
    row = {"hit_rate": 0.6, "throughput": 30.0, "p50_ms": 60.0, "p99_ms": 100.0, "max_ms": 900.0,
           "survivor_hit_rate_after_kill": 0.64, "failover": bench.failover(DRIVEN, NGINX_ERRORS)}
    results = {"machine": "AMD EPYC, 2 CPUs", "versions": {"onnxruntime": "1.32.0"}, "requests": 7, "users": 2,
               "traffic": {"visits": 3}, "mean_history": 100.0, "candidates": 8, "concurrency": 2, "working_set_rows": 1000,
               "entry_bytes": 2148, "budget_bytes": 2**20, "budget_fraction": 0.5, "ways": {bench.KILLED: row}}
    text = "\n".join(replicas_table(results))
    assert "1 request(s) in flight at it (on either replica), the longest answered in 900 ms" in text
    assert "**0.80 s** after the kill" in text and "(latency_timeline.png)" in text
    assert "re-sent to the survivor 1 request(s) the dead replica held, 0 sent on a dead kept-alive connection and 2 its" in text


def test_rows_keyed_by_user_are_never_shared_between_users(bench):
    import numpy as np

    keys = ["ann", "bob", "ann"]
    codes = [np.array([[1, 2], [3, 4]]), np.array([[1, 2]]), np.array([[1, 2]])]  # item row (1, 2) in every request
    own = bench.keyed_by_user(keys, codes)
    assert [c.shape[1] for c in own] == [3, 3, 3]
    assert own[0][0].tolist() != own[1][0].tolist()  # ann's and bob's (1, 2) are two rows now
    assert own[0][0].tolist() == own[2][0].tolist()  # ann's on two visits is one
    assert [c[:, 1:].tolist() for c in own] == [c.tolist() for c in codes]
