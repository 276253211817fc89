"""The `stca` ensemble on a real tritonserver: same scores as PyTorch over HTTP and gRPC, and the baselines agree."""

import numpy as np
import pytest

from compiler.serving.client import ScoringClient
from compiler.stca.checkpoint import load_model
from compiler.stca.data import sample_requests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("L,N", [(1, 1), (7, 3), (2_000, 128), (10_000, 1), (10_000, 300)])
def test_ensemble_scores_equal_pytorch(triton, model, protocol, L, N):
    url = triton.cfg.http_url if protocol == "http" else triton.cfg.grpc_url
    client = ScoringClient(url, protocol)
    request = next(sample_requests(model.config, [L], seed=L * 7 + N, n_candidates=N)).inputs
    scores = client.score(request)
    assert scores.shape == (N, 3)
    np.testing.assert_allclose(scores, model.score(request), rtol=0, atol=1e-4)
    client.close()


def test_the_client_reads_limits_and_tasks_from_the_server(triton, model):
    client = ScoringClient(triton.cfg.http_url)
    assert client.tasks == model.config.tasks
    assert (client.contract.max_history, client.contract.max_candidates) == (model.config.max_history, model.config.max_candidates)


@pytest.mark.parametrize("L,N", [(1, 1), (500, 40)])
def test_ensemble_equals_the_fused_naive_and_eager_baselines(triton, model, L, N):
    request = next(sample_requests(model.config, [L], seed=3, n_candidates=N)).inputs
    split = ScoringClient(triton.cfg.http_url).score(request)
    fused = ScoringClient(triton.cfg.http_url, model="stca_fused").score(request)
    naive = ScoringClient(triton.cfg.http_url, model="stca_naive").score(request)
    eager = ScoringClient(triton.cfg.http_url, model="stca_torch").score(request)
    np.testing.assert_allclose(split, fused, rtol=0, atol=1e-5)
    np.testing.assert_allclose(naive, fused, rtol=0, atol=1e-5)
    np.testing.assert_allclose(eager, model.score(request), rtol=0, atol=1e-6)



def test_rank_orders_candidates_by_score(triton, model):
    request = next(sample_requests(model.config, [100], seed=4, n_candidates=20)).inputs
    ranking = ScoringClient(triton.cfg.http_url).rank(request)
    top = ranking.top("finish", 20)
    assert [score for _, _, score in top] == sorted((score for _, _, score in top), reverse=True)
    assert {item for _, item, _ in top} == set(request["candidate_item_ids"].tolist())



def test_the_served_repository_stays_byte_identical_to_its_manifest(triton, served_repo, model):
    """Every Python-backend model has imported and served (the stub would write __pycache__/ beside model.py):
    the repository still holds exactly the files its manifest lists, with the same digests."""
    import json

    from compiler.core.artifacts import hash_tree

    for name in ("stca", "stca_naive", "stca_torch"):  # naive calls fused: every model has served a request
        ScoringClient(triton.cfg.http_url, model=name).score(next(sample_requests(model.config, [5], seed=9, n_candidates=2)).inputs)
    manifest = json.loads((served_repo / "manifest.json").read_text())
    assert {k: v for k, v in hash_tree(served_repo).items() if k != "manifest.json"} == manifest["files"]
