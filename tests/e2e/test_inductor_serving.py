"""stca_inductor on a real tritonserver: the PyTorch model under torch.compile scores as eager does, its warm-up is
reported apart from requests (/metrics, Triton's log), and serving it leaves the repository as its manifest says."""

import json

import numpy as np
import pytest

from compiler.build import BuildConfig, build
from compiler.core.artifacts import hash_tree
from compiler.core.names import INDUCTOR, TORCH
from compiler.measure.bench import torch_compile
from compiler.repository.deployment import EmitConfig
from compiler.runtime.inductor import WARMUP_SHAPES
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.checkpoint import load_model
from compiler.stca.data import sample_requests
from tests.e2e.conftest import QUICK_VERIFY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_checkpoint):
    """The tiny model with its two PyTorch baselines, eager and compiled, for the python target."""
    out = tmp_path_factory.mktemp("inductor") / "repo"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(baselines=(TORCH, INDUCTOR)), verify=QUICK_VERIFY))
    return out


@pytest.fixture(scope="module")
def triton(repo):
    with TritonServer(ServerConfig.on_free_ports(repo)) as server:  # ready only once stca_inductor has compiled
        yield server


@pytest.mark.parametrize("L,N", [(1, 1), (500, 40)])
def test_the_compiled_baseline_scores_as_eager_does(triton, model, L, N):
    request = next(sample_requests(model.config, [L], seed=3, n_candidates=N)).inputs
    eager = ScoringClient(triton.cfg.http_url, model=TORCH).score(request)
    compiled = ScoringClient(triton.cfg.http_url, model=INDUCTOR).score(request)  # L = N = 1 compiles a graph of its own
    np.testing.assert_allclose(eager, model.score(request), rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-4)


def test_the_compiled_baseline_reports_its_warmup_apart_from_requests(triton, model):
    """stca_inductor compiled in initialize: its seconds and graphs are on /metrics, as bench records them, and in
    Triton's log; a request near the warm-up's shape compiles nothing more."""
    compiled = torch_compile(triton.cfg.metrics_url)
    assert set(compiled) == {INDUCTOR} and compiled[INDUCTOR]["warmup_s"] > 0
    assert compiled[INDUCTOR]["graphs"] >= 2  # the warm-up's (one each side of L = 4,096); L = 1 or N = 1 requests add their own
    L, N = WARMUP_SHAPES[0]
    ScoringClient(triton.cfg.http_url, model=INDUCTOR).score(next(sample_requests(model.config, [L - 1], seed=5, n_candidates=N + 1)).inputs)
    assert torch_compile(triton.cfg.metrics_url)[INDUCTOR]["graphs"] == compiled[INDUCTOR]["graphs"]
    assert f"{INDUCTOR}: torch.compile warm-up" in triton.log_path.read_text()


def test_compiling_writes_nothing_into_the_served_repository(triton, repo, model):
    ScoringClient(triton.cfg.http_url, model=INDUCTOR).score(next(sample_requests(model.config, [5], seed=9, n_candidates=2)).inputs)
    manifest = json.loads((repo / "manifest.json").read_text())
    assert {k: v for k, v in hash_tree(repo).items() if k != "manifest.json"} == manifest["files"]
