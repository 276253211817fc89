"""The scoring client without a Triton server: the ranking it prints, the protocol and URL it accepts, the contract and
task names it reads from a model's config, and the request checks it makes before anything is sent.

Where the client must read a model config, a tiny http.server on a free 127.0.0.1 port stands in for Triton's HTTP
endpoint (GET /v2/models/<model>/config, and POST .../infer answered with fixed scores in the JSON form of the inference
protocol); it is always shut down. Serving real models is the e2e tier's (tests/e2e/test_serving.py).
"""

import contextlib
import gc
import json
import socket
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from compiler.core.contract import CANDIDATE, CONTRACT_PARAMETER, REQUEST, Contract, Input, RequestError, stca_contract
from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE
from compiler.serving.client import Ranking, ScoringClient
from compiler.stca.data import sample_requests
from compiler.stca.model import preset
from tests.serving.local_http import local_http

CONFIG = preset("tiny", max_history=100, max_candidates=10)
CONTRACT = stca_contract(CONFIG)
TASKS = "finish,skip,like"


@contextlib.contextmanager
def stand_in(configs: dict, scores: np.ndarray | None = None, output: str = "scores"):
    """Triton's HTTP model config and inference endpoints for the models in `configs` (name -> its config JSON), on a
    free 127.0.0.1 port; every inference answers `scores`. Yields (host:port, the inference requests' JSON headers)."""
    inferred = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's spelling)
            model = self.path.removeprefix("/v2/models/").removesuffix("/config")
            if model in configs:
                self.answer(200, configs[model])
            else:
                self.answer(400, {"error": f"Request for unknown model: '{model}' is not found"})

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            header_length = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            inferred.append((self.path, json.loads(body[:header_length])))
            self.answer(200, {"model_name": ENSEMBLE, "outputs": [
                {"name": output, "datatype": "FP32", "shape": list(scores.shape), "data": scores.ravel().tolist()}]})

        def answer(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    with local_http(Handler) as address:
        yield address, inferred


def model_config(contract: Contract | None = CONTRACT, tasks: str | None = TASKS) -> dict:
    """A served model's config as Triton's HTTP endpoint returns it: parameters are {name: {"string_value": ...}}."""
    parameters = {}
    if contract is not None:
        parameters[CONTRACT_PARAMETER] = {"string_value": json.dumps(contract.to_dict())}
    if tasks is not None:
        parameters["tasks"] = {"string_value": tasks}
    return {"name": ENSEMBLE, "platform": "ensemble", "max_batch_size": 0, "parameters": parameters}


@contextlib.contextmanager
def client_on(configs: dict, scores=None, output: str = "scores", model: str = ENSEMBLE):
    with stand_in(configs, scores, output) as (url, inferred):
        client = ScoringClient(url, model=model, timeout_s=10)
        try:
            yield client, inferred
        finally:
            client.close()


@pytest.fixture
def request_inputs() -> dict:
    return next(sample_requests(CONFIG, [20], seed=0, n_candidates=4)).inputs


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Four candidates, two tasks; scores exact in float32. finish: 102 and 104 tie at 0.75; like: 101 and 103 tie at 0.875.
RANKING = Ranking(np.array([101, 102, 103, 104]),
                  np.array([[0.25, 0.875], [0.75, 0.125], [0.5, 0.875], [0.75, 0.375]], dtype=np.float32), ("finish", "like"))


def test_top_orders_candidates_by_the_tasks_score_best_first():
    assert RANKING.top("finish", k=4) == [(1, 102, 0.75), (2, 104, 0.75), (3, 103, 0.5), (4, 101, 0.25)]
    assert RANKING.top("like", k=4) == [(1, 101, 0.875), (2, 103, 0.875), (3, 104, 0.375), (4, 102, 0.125)]


def test_tied_scores_keep_the_candidates_request_order():
    assert [c for _, c, _ in RANKING.top("finish", k=2)] == [102, 104]  # 102 comes before 104 in the request
    assert [c for _, c, _ in RANKING.top("like", k=2)] == [101, 103]


def test_top_returns_at_most_k_and_all_candidates_when_k_is_larger():
    assert RANKING.top("like", k=1) == [(1, 101, 0.875)]
    assert len(RANKING.top("like", k=50)) == 4


def test_the_table_puts_each_tasks_top_k_side_by_side():
    header, rule, *rows = RANKING.table(k=2).splitlines()
    assert "finish (item id: score)" in header and "like (item id: score)" in header
    assert header.index("finish") < header.index("like")
    assert set(rule) == {"-"} and len(rule) == len(header)
    assert [row.split() for row in rows] == [["1", "102:", "0.7500", "101:", "0.8750"],
                                             ["2", "104:", "0.7500", "103:", "0.8750"]]


def test_the_table_has_one_row_per_candidate_when_k_exceeds_them_and_says_what_names_a_candidate():
    ranking = Ranking(np.arange(3), np.array([[0.5], [0.25], [0.75]], dtype=np.float32), ("finish",), label="candidate")
    lines = ranking.table(k=10).splitlines()
    assert "finish (candidate: score)" in lines[0]
    assert [row.split() for row in lines[2:]] == [["1", "2:", "0.7500"], ["2", "0:", "0.5000"], ["3", "1:", "0.2500"]]


def test_a_protocol_other_than_http_or_grpc_is_refused():
    with pytest.raises(CompilerError, match="protocol: 'ws' is not http or grpc"):
        ScoringClient("127.0.0.1:8000", protocol="ws")


@pytest.mark.parametrize("protocol, message", [("http", "no Triton server answers at http://"), ("grpc", "from grpc://")])
def test_a_url_where_no_server_answers_is_named_in_the_error(protocol, message):
    port = unused_port()
    with pytest.raises(CompilerError, match=f"{message}127\\.0\\.0\\.1:{port} "):
        ScoringClient(f"127.0.0.1:{port}", protocol=protocol)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tritonclient's half-built client's __del__
def test_a_url_with_a_scheme_is_refused_as_a_compiler_error():
    kind, message = construction_error(f"http://127.0.0.1:{unused_port()}")
    assert kind is CompilerError, f"{kind.__name__}: {message}"
    assert "http://127.0.0.1" in message


def construction_error(url: str) -> tuple[type, str]:
    """What ScoringClient(url) raised, as (type, message); the exception itself (whose traceback holds the half-built
    tritonclient client) is dropped and collected here."""
    try:
        ScoringClient(url)
    except Exception as e:  # noqa: BLE001
        kind, message = type(e), str(e)
    else:
        kind, message = type(None), "nothing raised"
    gc.collect()
    return kind, message


def test_the_client_reads_the_contract_and_task_names_from_the_models_config():
    with client_on({ENSEMBLE: model_config()}) as (client, _):
        assert client.contract == CONTRACT
        assert client.tasks == ("finish", "skip", "like")
        assert (client.protocol, client.model) == ("http", ENSEMBLE)


def test_a_model_without_task_names_has_none():
    with client_on({ENSEMBLE: model_config(tasks=None)}) as (client, _):
        assert client.tasks == ()


def test_a_model_without_a_contract_parameter_is_refused_by_name():
    with stand_in({ENSEMBLE: model_config(contract=None)}) as (url, _):
        with pytest.raises(CompilerError, match=f"model 'stca' has no {CONTRACT_PARAMETER} parameter"):
            ScoringClient(url)


def test_a_model_the_server_does_not_have_is_named_with_the_servers_answer():
    with stand_in({ENSEMBLE: model_config()}) as (url, _):
        with pytest.raises(CompilerError, match=f"cannot read model 'nope' from http://{url} \\(.*unknown model"):
            ScoringClient(url, model="nope")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("history_actions"), r"missing input\(s\) \['history_actions'\]"),
    (lambda r: r.update(history_age_s=r["history_age_s"].astype(np.float64)), "history_age_s: dtype float64 is not float32"),
    (lambda r: r["candidate_item_ids"].__setitem__(0, -3), "candidate_item_ids: value -3 is negative"),
    (lambda r: r.update(candidate_item_ids=np.arange(1, 12), candidate_features=np.ones((11, 3), np.int64)),
     r"candidate_item_ids: 11 candidates is outside 1\.\.10"),
])
def test_a_request_that_breaks_the_contract_is_refused_by_input_name_before_it_is_sent(request_inputs, mutate, message):
    mutate(request_inputs)
    with client_on({ENSEMBLE: model_config()}, scores=np.zeros((4, 3), np.float32)) as (client, inferred):
        with pytest.raises(CompilerError, match=f"^request: {message}") as raised:
            client.score(request_inputs)
        with pytest.raises(CompilerError, match=message):
            client.rank(request_inputs)
    assert isinstance(raised.value.__cause__, RequestError)  # the contract's own error, wrapped
    assert inferred == []  # nothing reached the server


def test_a_good_request_is_sent_once_with_every_input_and_asks_for_the_first_output(request_inputs):
    scores = np.arange(12, dtype=np.float32).reshape(4, 3) / 16
    with client_on({ENSEMBLE: model_config()}, scores=scores) as (client, inferred):
        np.testing.assert_array_equal(client.score(request_inputs), scores)
    ((path, header),) = inferred
    assert path == f"/v2/models/{ENSEMBLE}/infer"
    sent = {i["name"]: (i["shape"], i["datatype"]) for i in header["inputs"]}
    assert sent == {"history_item_ids": ([20], "INT64"), "history_actions": ([20], "INT64"), "history_age_s": ([20], "FP32"),
                    "user_features": ([4], "INT64"), "candidate_item_ids": ([4], "INT64"), "candidate_features": ([4, 3], "INT64")}
    assert [o["name"] for o in header["outputs"]] == ["scores"]


def test_rank_names_candidates_by_their_item_ids_and_columns_by_the_models_tasks(request_inputs):
    scores = np.array([[0.5, 0.25, 0.125], [0.75, 0.5, 0.25], [0.25, 0.75, 0.5], [0.125, 0.125, 0.75]], np.float32)
    with client_on({ENSEMBLE: model_config()}, scores=scores) as (client, _):
        ranking = client.rank(request_inputs)
    ids = request_inputs["candidate_item_ids"]
    assert ranking.tasks == ("finish", "skip", "like") and ranking.label == "item id"
    np.testing.assert_array_equal(ranking.candidates, ids)
    assert [c for _, c, _ in ranking.top("finish", k=4)] == [ids[1], ids[0], ids[2], ids[3]]
    assert [c for _, c, _ in ranking.top("like", k=1)] == [ids[3]]


def test_rank_names_columns_by_output_index_where_the_task_names_do_not_fit(request_inputs):
    with client_on({ENSEMBLE: model_config(tasks="finish,skip")}, scores=np.zeros((4, 3), np.float32)) as (client, _):
        assert client.rank(request_inputs).tasks == ("scores[0]", "scores[1]", "scores[2]")


def test_rank_names_candidates_by_position_where_the_contract_has_no_item_ids():
    contract = Contract((Input("events", "float32", ("L",), REQUEST), Input("items", "float32", ("N", 2), CANDIDATE)),
                        ("logits",), {"L": 50, "N": 8})
    request = {"events": np.ones(5, np.float32), "items": np.ones((3, 2), np.float32)}
    scores = np.array([0.25, 0.75, 0.5], np.float32)  # one score per candidate: a (N,) output
    with client_on({ENSEMBLE: model_config(contract, tasks=None)}, scores=scores, output="logits") as (client, _):
        ranking = client.rank(request)
    assert ranking.label == "candidate" and ranking.tasks == ("logits[0]",)
    assert ranking.top("logits[0]", k=3) == [(1, 1, 0.75), (2, 2, 0.5), (3, 0, 0.25)]
