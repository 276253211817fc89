"""fp16 and int8 repositories on the embedded Triton: the server returns what the compiled graphs compute."""

import numpy as np
import pytest

from compiler.build import BuildConfig, build
from compiler.precision.convert import PrecisionConfig
from compiler.repository.reader import half_files
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.checkpoint import load_model
from compiler.stca.data import sample_requests
from compiler.verify.gates import VerifyConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_served_scores_equal_the_verified_graphs(tmp_path, tiny_checkpoint, precision):
    out = tmp_path / precision
    cases = VerifyConfig(lengths=(64, 1_000), candidates=(128,), requests_per_case=2, auc_requests=8)
    verification = build(BuildConfig(out=out, checkpoint=tiny_checkpoint, max_history=2_000, verify=cases,
                                     precision=PrecisionConfig(precision))).verification
    assert verification.passed, verification.failures
    model = load_model(tiny_checkpoint, max_history=2_000)
    in_process = SplitRunner(*(OrtGraph(path) for path in half_files(out)))
    with TritonServer(ServerConfig.on_free_ports(out)) as server:
        client = ScoringClient(server.cfg.http_url)
        for request in sample_requests(model.config, [3, 700, 2_000], seed=11, n_candidates=50):
            np.testing.assert_allclose(client.score(request.inputs), in_process.score(request.inputs), rtol=0, atol=1e-5)
