"""Where the time goes (Triton's statistics), the measured thread budget, and the request validator that
guards C++-backend models: each on a real tritonserver."""

import json
import shutil

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from compiler.build import BuildConfig, build
from compiler.core.artifacts import hash_tree
from compiler.core.names import ENCODER, ENSEMBLE, FUSED, SCORER, SPLIT, VALIDATOR
from compiler.measure.tune import TuneConfig, tune
from compiler.repository.deployment import EmitConfig
from compiler.repository.manifest import read as read_manifest
from compiler.repository.reader import composing, read_config
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.checkpoint import load_config
from compiler.stca.data import sample_requests
from tests.e2e.conftest import QUICK_VERIFY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.mark.parametrize("split_processes", [1, 2])
def test_stage_times_count_each_composing_model_once_per_request(tmp_path, tiny_checkpoint, split_processes):
    out = tmp_path / "repo"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(split_processes=split_processes), verify=QUICK_VERIFY))
    parts = composing(out)[ENSEMBLE]
    assert parts == ((SPLIT,) if split_processes == 1 else (ENCODER, SCORER))
    with TritonServer(ServerConfig.on_free_ports(out)) as triton:
        url, metrics = triton.cfg.http_url, triton.cfg.metrics_url
        before, halves_before = server_stats.snapshot(url), server_stats.split_half_ms(metrics)
        client = ScoringClient(url)
        for request in sample_requests(load_config(tiny_checkpoint), [30, 90, 200], seed=4, n_candidates=5):
            client.score(request.inputs)
        client.close()
        times = {t.model: t for t in server_stats.since(url, before, [ENSEMBLE, *parts])}
        halves = {h: ms - halves_before.get(h, 0.0) for h, ms in server_stats.split_half_ms(metrics).items()}
    assert all(times[m].requests == 3 for m in (ENSEMBLE, *parts))
    for part in parts:
        assert times[part].compute_infer_ms > 0 and times[part].total_ms >= times[part].compute_infer_ms
    # the ensemble's time is its steps' time: it cannot be shorter than their compute together
    assert times[ENSEMBLE].total_ms >= sum(times[p].compute_infer_ms for p in parts)
    if split_processes == 1:  # stca_split timed its halves itself, inside its own compute
        assert halves["encoder"] > 0 and halves["scorer"] > 0
        assert halves["encoder"] + halves["scorer"] <= 3 * times[SPLIT].compute_infer_ms
    else:
        assert halves == {}


def test_tune_measures_each_candidate_and_writes_the_fastest_into_the_repository(served_repo, tiny_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(served_repo, repo)
    result = tune(TuneConfig(repo=repo, history=20, candidates=4, requests=2, concurrency=(1,), window_requests=4))
    manifest = json.loads((repo / "manifest.json").read_text())
    budget = manifest["thread_budget"]
    assert budget["chosen_by"] == "tune" and len(budget["tuning"]["sweep"]) == len(result.sweep) >= 3
    assert len({json.dumps(entry["placements"], sort_keys=True) for entry in result.sweep}) == len(result.sweep)  # none twice
    for model in (ENSEMBLE, FUSED):
        measured = [entry["throughput"][model] for entry in result.sweep]
        assert all(t > 0 for t in measured)
        assert budget["tuning"]["choice"][model]["throughput"] == max(measured)
    for model in (*composing(repo)[ENSEMBLE], FUSED):
        config, chosen = read_config(repo / model / "config.pbtxt"), result.chosen[model]
        assert config.instance_group[0].count == chosen.instances == budget["placements"][model]["instances"]
        assert config.parameters["intra_op_threads"].string_value == str(chosen.threads)
        assert config.parameters["allow_spinning"].string_value == ("1" if chosen.spinning else "0")
    assert manifest["files"] == {k: v for k, v in hash_tree(repo).items() if k != "manifest.json"}
    assert read_manifest(repo).thread_budget == result.thread_budget  # written through the typed record
    with TritonServer(ServerConfig.on_free_ports(repo)) as server:  # the tuned repository still serves
        scores = ScoringClient(server.cfg.http_url).score(next(sample_requests(load_config(tiny_checkpoint), [25], seed=1, n_candidates=3)).inputs)
    assert scores.shape == (3, 3)


def test_the_validator_refuses_a_bad_request_by_name_and_passes_a_good_one_unchanged(tiny_checkpoint, tmp_path):
    built = tmp_path / "ort"
    build(BuildConfig(out=built, checkpoint=tiny_checkpoint, emit=EmitConfig(target="onnxruntime", device="cpu"), verify=QUICK_VERIFY))
    repo = tmp_path / "validator-only"  # the onnxruntime backend is not in the embedded server; the validator runs alone
    shutil.copytree(built / VALIDATOR, repo / VALIDATOR)
    request = next(sample_requests(load_config(tiny_checkpoint), [40], seed=2, n_candidates=6)).inputs
    with TritonServer(ServerConfig.on_free_ports(repo)) as server:
        client = httpclient.InferenceServerClient(server.cfg.http_url)
        result = client.infer(VALIDATOR, _tensors(request))
        for name, value in request.items():
            np.testing.assert_array_equal(result.as_numpy(f"checked_{name}"), value)
        bad = {**request, "candidate_item_ids": -request["candidate_item_ids"]}
        with pytest.raises(InferenceServerException, match=r"stca_request_validator: candidate_item_ids: value -\d+ is negative"):
            client.infer(VALIDATOR, _tensors(bad))
        client.close()


def _tensors(request: dict) -> list:
    tensors = []
    for name, value in request.items():
        tensor = httpclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors
