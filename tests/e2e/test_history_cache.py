"""The history encoder's row cache on a real tritonserver: scores equal PyTorch's on repeated-user traffic, its
counters are on /metrics, and a small budget evicts and stays exact on a freshly started (empty) server."""

import json
import threading
import urllib.request

import numpy as np
import pytest

from compiler.build import BuildConfig, build
from compiler.core.names import ENCODER, SPLIT
from compiler.repository.deployment import EmitConfig
from compiler.repository.reader import cache_holder, read_config
from compiler.runtime.ort import OrtGraph
from compiler.runtime.row_cache import distinct, key_codes
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.serving.server_stats import history_cache_counters
from compiler.stca.checkpoint import load_model
from compiler.stca.data import RepeatedUsers, repeated_user_requests
from tests.e2e.conftest import QUICK_VERIFY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def cache_counters(server: TritonServer) -> dict[str, float]:
    return history_cache_counters(server.cfg.metrics_url, cache_holder(server.cfg.repo))


def test_cached_scores_equal_pytorch_and_the_counters_add_up(triton, tiny_checkpoint):
    assert cache_holder(triton.cfg.repo) == SPLIT  # as built by default: one process holds both halves and the cache
    model = load_model(tiny_checkpoint)
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=3, visits=3), seed=21, n_candidates=32)
    # repeated rows reach the scorer once, counted in the key bias: these requests repeat keys, so the scores below check it
    spec = json.loads(read_config(triton.cfg.repo / SPLIT / "config.pbtxt").parameters["history_cache"].string_value)
    assert spec["multiplicity"] == "key_bias"
    key_graph = OrtGraph(triton.cfg.repo / SPLIT / "1" / "key_graph.onnx")
    distinct_keys = [len(distinct(key_codes([key_graph.run(r)[name] for name, _ in spec["keys"]]))[0]) for r in traffic]
    assert all(d < len(r["history_item_ids"]) for d, r in zip(distinct_keys, traffic))
    client = ScoringClient(triton.cfg.http_url)
    before = cache_counters(triton)
    for k, request in enumerate(traffic):
        np.testing.assert_allclose(client.score(request), model.score(request), rtol=0, atol=1e-4, err_msg=f"request {k}")
    client.close()
    after = cache_counters(triton)
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    assert hits > 0 and misses > 0
    # a cache with room keeps every row computed for these requests (sent one at a time)
    assert after["admitted"] - before["admitted"] == misses and after["rejected"] == before["rejected"]
    # since the server started: every computed row kept, or not kept because the other instance kept it meanwhile
    # (both instances run their warmup request when they load, perhaps at once); nothing evicted
    assert after["admitted"] + after["rejected"] == after["misses"] and after["evictions"] == 0
    assert after["entries"] == after["admitted"] - after["evictions"]
    assert 0 < after["bytes"] <= EmitConfig().history_cache_bytes


@pytest.mark.parametrize("admission", ["all", "frequency"])
def test_a_small_budget_evicts_or_refuses_and_a_fresh_server_starts_empty(tmp_path, tiny_checkpoint, admission):
    model = load_model(tiny_checkpoint)
    out = tmp_path / "repo"
    budget = 75_000  # about 200 rows of the tiny model, in the one cache stca_split's two instances share: one user fits, two do not
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, verify=QUICK_VERIFY,  # every request through the cache
                      emit=EmitConfig(history_cache_bytes=budget, history_cache_admission=admission, history_cache_skip=False)))
    parameters = read_config(out / SPLIT / "config.pbtxt").parameters
    assert (parameters["history_cache_admission"].string_value, parameters["history_cache_skip"].string_value) == (admission, "0")
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=2, visits=2), seed=22, n_candidates=8)
    traffic = [{k: v[-150:] if k.startswith("history_") else v for k, v in r.items()} for r in traffic]
    with TritonServer(ServerConfig.on_free_ports(out)) as server:
        client = ScoringClient(server.cfg.http_url)
        np.testing.assert_allclose(client.score(traffic[0]), model.score(traffic[0]), rtol=0, atol=1e-4)
        first = cache_counters(server)
        # nothing survives a restart: every row was computed (a hit or two are Triton's warmup requests, one history row
        # each, finding the row an earlier warmup request left)
        assert first["hits"] <= 2 and first["misses"] > 100
        for request in traffic[1:] * 2:
            np.testing.assert_allclose(client.score(request), model.score(request), rtol=0, atol=1e-4)
        client.close()
        counters = cache_counters(server)
    if admission == "all":  # plain LRU: every computed row is kept, the least recently used go (a row is not kept only
        # where the other instance kept it first: their warmups may run at once, before `first`)
        assert counters["evictions"] > 0 and counters["rejected"] == first["rejected"]
    else:  # a full cache keeps a new row only over a less asked-for one: the rest are refused
        assert counters["rejected"] > 0 and counters["admitted"] + counters["rejected"] == counters["misses"]
    assert counters["bytes"] <= budget


def test_the_cache_in_the_scorer_takes_row_keys_and_stays_exact(tmp_path, tiny_checkpoint):
    """--history-cache-at scorer: the encoder step serves the key graph, only row keys cross to the scorer, which
    assembles the cut from its own cache; scores equal PyTorch's and the scorer reports the counters."""
    from compiler.core.names import ENSEMBLE, SCORER

    model = load_model(tiny_checkpoint)
    out = tmp_path / "repo"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(history_cache_at="scorer"), verify=QUICK_VERIFY))
    assert cache_holder(out) == SCORER
    encoder, scorer = read_config(out / ENCODER / "config.pbtxt"), read_config(out / SCORER / "config.pbtxt")
    keys = [o.name for o in encoder.output if o.name.startswith("row_key_")]
    assert keys and {i.name for i in scorer.input} >= set(keys) and not {"K_1", "V_1"} & {i.name for i in scorer.input}
    assert scorer.instance_group[0].count == 1  # one process, one cache
    step = read_config(out / ENSEMBLE / "config.pbtxt").ensemble_scheduling.step[1]
    assert set(keys) <= set(step.input_map)
    traffic = repeated_user_requests(model.config, RepeatedUsers(users=2, visits=3), seed=24, n_candidates=16)
    with TritonServer(ServerConfig.on_free_ports(out)) as server:
        client = ScoringClient(server.cfg.http_url)
        for k, request in enumerate(traffic):
            np.testing.assert_allclose(client.score(request), model.score(request), rtol=0, atol=1e-4, err_msg=f"request {k}")
        client.close()
        counters = history_cache_counters(server.cfg.metrics_url, SCORER)
        assert counters["hits"] > 0 and counters["misses"] > 0
        assert history_cache_counters(server.cfg.metrics_url, ENCODER) == {}


def per_instance(server: TritonServer, counter: str) -> dict[str, float]:
    """A row cache counter of each instance of the model holding the cache, from /metrics."""
    holder, found = cache_holder(server.cfg.repo), {}
    with urllib.request.urlopen(server.cfg.metrics_url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f"stca_history_cache_{counter}{{") and f'model="{holder}"' in line:
                found[line.split('instance="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_the_instances_share_one_cache(triton, tiny_checkpoint):
    """stca_split's two instances (two processes) hold one cache: a request's rows computed by whichever instance
    answered it first are found by both afterwards, so sending it again from two threads computes no row."""
    assert len(per_instance(triton, "hits")) == 2  # the plan's two instances on two cores
    model = load_model(tiny_checkpoint)
    request = repeated_user_requests(model.config, RepeatedUsers(users=1, visits=1), seed=23, n_candidates=16)[0]
    client = ScoringClient(triton.cfg.http_url)
    client.score(request)
    client.close()
    hits, misses = per_instance(triton, "hits"), sum(per_instance(triton, "misses").values())
    expected, answers = model.score(request), []

    def send():  # a client per thread: one is not shared between threads
        client = ScoringClient(triton.cfg.http_url)
        answers.extend(client.score(request) for _ in range(6))
        client.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 12
    for answer in answers:
        np.testing.assert_allclose(answer, expected, rtol=0, atol=1e-4)
    assert sum(per_instance(triton, "misses").values()) == misses  # no instance computed a row of it again
    grew = [name for name, value in per_instance(triton, "hits").items() if value > hits.get(name, 0)]
    assert len(grew) == 2, f"only {grew} answered: the test needs both instances to"
