"""Bad requests get a Triton error naming the input and the limit; everyone else keeps being served."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE
from compiler.repository.reader import composing
from compiler.serving.client import ScoringClient
from compiler.stca.checkpoint import load_model
from compiler.stca.data import sample_requests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
HISTORY = ("history_item_ids", "history_actions", "history_age_s")


def resize_history(r, L):
    for k in HISTORY:
        r[k] = np.resize(r[k], L).astype(r[k].dtype)


def set_value(name, index, value):
    return lambda r: r[name].__setitem__(index, value)


BAD = {
    "L = 0": (lambda r: resize_history(r, 0), r"history length 0 is outside 1\.\.10000"),
    "L above the maximum": (lambda r: resize_history(r, 10_001), r"history length 10001 is outside 1\.\.10000"),
    "N = 0": (lambda r: r.update(candidate_item_ids=r["candidate_item_ids"][:0], candidate_features=r["candidate_features"][:0]),
              r"0 candidates is outside 1\.\.1024"),
    "wrong dtype": (lambda r: r.update(history_age_s=r["history_age_s"].astype(np.float64)),
                    r"input 'history_age_s' data-type is 'FP64', but model 'stca' expects 'FP32'"),
    "wrong rank": (lambda r: r.update(history_item_ids=r["history_item_ids"][None]),
                   r"input 'history_item_ids' for model 'stca'\. Expected \[-1\], got \[1,50\]"),
    "mismatched lengths": (lambda r: r.update(history_actions=r["history_actions"][:-1]),
                           r"history_actions: length 49 does not match history_item_ids length 50"),
    "NaN age": (set_value("history_age_s", 0, np.nan), r"history_age_s: 1 value\(s\) are NaN"),
    "negative age": (set_value("history_age_s", 0, -1.0), r"history_age_s: value -1\.0 is negative"),
    "negative history id": (set_value("history_item_ids", 2, -3), r"history_item_ids: value -3 is negative"),
    "negative candidate id": (set_value("candidate_item_ids", 0, -1), r"candidate_item_ids: value -1 is negative"),
    "unknown action": (set_value("history_actions", 1, 8), r"history_actions: value 8 is outside 0\.\.7"),
}


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def good_request(model, seed):
    return next(sample_requests(model.config, [50], seed=seed, n_candidates=8)).inputs


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_server_names_the_input_and_the_limit(triton, model, case):
    mutate, message = BAD[case]
    request = good_request(model, 1)
    mutate(request)
    client = ScoringClient(triton.cfg.http_url)
    with pytest.raises(InferenceServerException, match=message):
        client.infer(request)  # past the client's own checks, straight to the server


@pytest.mark.parametrize("case", ["L = 0", "NaN age", "negative candidate id", "mismatched lengths"])
def test_the_client_refuses_before_sending(triton, model, case):
    mutate, message = BAD[case]
    request = good_request(model, 2)
    mutate(request)
    with pytest.raises(CompilerError, match=message):
        ScoringClient(triton.cfg.http_url).score(request)


def test_a_burst_of_good_and_bad_requests(triton, model):
    """Concurrent clients: every good response is right, every bad one a named error, and the server stays up."""
    cases = []
    for i in range(48):
        request = good_request(model, 100 + i)
        expected = None
        if i % 3 == 2:
            mutate, message = BAD[sorted(BAD)[i % len(BAD)]]
            mutate(request)
        else:
            expected = model.score(request)
            message = None
        cases.append((request, expected, message))

    def send(case):
        request, expected, message = case
        client = ScoringClient(triton.cfg.http_url if id(case) % 2 else triton.cfg.grpc_url, "http" if id(case) % 2 else "grpc")
        try:
            return case, client.infer(request), None
        except InferenceServerException as e:
            return case, None, e.message()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(send, cases))
    good = bad = 0
    for (request, expected, message), scores, error in results:
        if message is None:
            assert error is None, error
            np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)
            good += 1
        else:
            assert scores is None and error is not None
            assert __import__("re").search(message, error), (message, error)
            bad += 1
    assert (good, bad) == (32, 16)
    assert triton.is_ready()
    health = httpclient.InferenceServerClient(triton.cfg.http_url)
    assert all(health.is_model_ready(m) for m in (ENSEMBLE, *composing(triton.cfg.repo)[ENSEMBLE]))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_action_id_of_n_actions_is_refused_with_the_input_named(triton, model, protocol):
    request = good_request(model, 3)
    request["history_actions"][5] = model.config.n_actions
    client = ScoringClient(triton.cfg.http_url if protocol == "http" else triton.cfg.grpc_url, protocol)
    with pytest.raises(InferenceServerException, match=rf"history_actions: value {model.config.n_actions} is outside 0\.\.{model.config.n_actions - 1}"):
        client.infer(request)  # the server's own check
    with pytest.raises(CompilerError, match="history_actions: value"):
        client.score(request)  # and the client's, before sending
