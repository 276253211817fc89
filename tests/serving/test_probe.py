"""The probe's request is one the contract accepts; its verdicts for readiness and liveness from what the server
answered (a local HTTP stand-in answering as told: the e2e tier probes a real tritonserver); and the client's rule for
which failures it sends again."""

import json
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from compiler.core import contract as contract_module
from compiler.core import names
from compiler.core.contract import stca_contract
from compiler.serving import probe
from compiler.serving.client import retryable
from compiler.serving.server import free_port
from compiler.stca.model import preset
from tests.serving.local_http import local_http

NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "BOOL": np.bool_}


def test_the_probe_shares_the_packages_names():
    assert (probe.ENSEMBLE, probe.CONTRACT_PARAMETER) == (names.ENSEMBLE, contract_module.CONTRACT_PARAMETER)


@pytest.mark.parametrize("size", ["tiny", "medium"])
def test_the_smallest_request_is_one_the_contract_accepts(size):
    contract = stca_contract(preset(size))
    body = probe.smallest_request(contract.to_dict())
    inputs = {i["name"]: np.array(i["data"], NUMPY[i["datatype"]]).reshape(i["shape"]) for i in body["inputs"]}
    assert contract.validate(inputs) == {"L": 1, "N": 1}  # every value valid, none padding
    assert body["outputs"] == [{"name": contract.outputs[0]}]


def stand_in(status: int, answer: dict | str):
    contract = stca_contract(preset("tiny"))

    class Triton(BaseHTTPRequestHandler):
        def do_GET(self):
            self._send(200, {"parameters": {probe.CONTRACT_PARAMETER: {"string_value": json.dumps(contract.to_dict())}}})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(status, answer)

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return local_http(Triton)


@pytest.mark.parametrize("status, answer, ready, alive", [
    (200, {"outputs": [{"name": "scores", "data": [0.25, 0.5, 0.75]}]}, True, True),
    (200, {"outputs": [{"name": "scores", "data": [0.25, None, 0.75]}]}, False, False),  # a value that is not a score
    (500, {"error": "in ensemble 'stca', Stub process 'stca_split_0_0' is not healthy."}, False, False),
    (503, {"error": "Exceeds maximum queue size"}, False, True),  # refused for load: out of rotation, not restarted
])
def test_readiness_needs_a_scored_request_and_liveness_fails_only_on_a_models_own_failure(status, answer, ready, alive):
    with stand_in(status, answer) as url:
        result = probe.probe(url)
        assert result.ok == ready and result.model_failed == (not alive)
        assert probe.main(["--url", url]) == (0 if ready else 1)
        assert probe.main(["--url", url, "--liveness"]) == (0 if alive else 1)
    if status == 500:
        assert "not healthy" in result.detail


def test_where_nothing_answers_readiness_fails_and_liveness_does_not():
    url = f"127.0.0.1:{free_port()}"
    result = probe.probe(url, timeout_s=2)
    assert not result.ok and result.status is None and not result.model_failed


@pytest.mark.parametrize("error, again", [
    (InferenceServerException("in ensemble 'stca', Stub process 'stca_split_0_0' is not healthy.", status="500"), True),
    (InferenceServerException("Request for unknown model: 'stca' is not found", status="400"), True),
    (InferenceServerException("stca_split: history_item_ids: value -1 is negative", status="400"), False),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (TimeoutError("timed out"), False),  # the request may still be running
    (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), False),
    (ValueError("not a transport error"), False),
])
def test_the_client_sends_again_only_what_may_pass(error, again):
    assert retryable(error) == again
