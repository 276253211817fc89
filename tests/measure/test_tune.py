"""Tune without a tritonserver: which candidate budgets it measures, how it writes each into a copy of the repository,
which one each tuned model keeps, and the configs and manifest it leaves. The server and perf_analyzer are replaced by
fakes that record what they were given and answer throughputs written in the test; a real server and a real sweep
are the e2e tier's (tests/e2e/test_tune.py)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from compiler.build import BuildConfig, build
from compiler.core.errors import CompilerError
from compiler.core.names import BASELINES, ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, SCORER, SPLIT, TORCH
from compiler.measure import tune as tune_module
from compiler.measure.tune import TuneConfig, tune
from compiler.repository.deployment import EmitConfig
from compiler.repository.manifest import is_build
from compiler.repository.reader import read_config
from compiler.verify.gates import VerifyConfig

QUICK = VerifyConfig(lengths=(7, 300), candidates=(3, 32), requests_per_case=1, auc_requests=0)
CORES = 2  # the builds' and the sweeps' budget, whatever this machine has
CONCURRENCY_GAIN = {1: 1.0, 2: 1.5, 4: 1.25}  # every fake measurement peaks at concurrency 2


def label(instances: int, threads: int, spinning: bool = False) -> dict:
    return {"instances": instances, "threads": threads, "spinning": spinning}


class FakeTriton:
    """Stands in for TritonServer and perf in compiler.measure.tune. Each server start records the copy it serves (its
    models and their configs) and the repository's own configs at that moment; perf answers throughput[model][i] x
    CONCURRENCY_GAIN[c] on the i-th server started."""

    def __init__(self, repo: Path, throughput: dict[str, list[float]]):
        self.repo, self.throughput = repo, throughput
        self.started, self.calls, self.originals_then, self.linked = [], [], [], []
        self.originals = configs_text(repo)

    def server(self, cfg):
        fake = self

        class Server:
            def __init__(self, server_cfg):
                self.cfg = server_cfg

            def __enter__(self):
                copy = Path(self.cfg.repo)
                fake.started.append({"models": sorted(p.name for p in copy.iterdir()),
                                     "configs": {m: read_config(copy / m / "config.pbtxt") for m in (SPLIT, FUSED, ENCODER, SCORER)
                                                 if (copy / m / "config.pbtxt").is_file()}})
                fake.originals_then.append(configs_text(fake.repo))
                graph = next(copy.glob("*/1/model.onnx"))
                fake.linked.append(graph.stat().st_ino == (fake.repo / graph.relative_to(copy)).stat().st_ino)
                return self

            def __exit__(self, *exc):
                return False

        return Server(cfg)

    def perf(self, model, url, inputs, concurrency, csv_path, *, window_requests, protocol="http"):
        load = json.loads(Path(inputs).read_text())["data"]
        self.calls.append({"server": len(self.started) - 1, "model": model, "concurrency": concurrency, "url": url,
                           "protocol": protocol, "window_requests": window_requests,
                           "load": [(r["history_item_ids"]["shape"], r["candidate_item_ids"]["shape"]) for r in load]})
        value = self.throughput[model][len(self.started) - 1] * CONCURRENCY_GAIN[concurrency]
        return {"concurrency": concurrency, "throughput": value, "p50_ms": 1.0, "p99_ms": 2.0}


def configs_text(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.glob("*/config.pbtxt"))}


def placement_of(config) -> dict:
    """What a python-backend config holds of a thread budget."""
    return label(sum(g.count for g in config.instance_group), int(config.parameters["intra_op_threads"].string_value),
                 config.parameters["allow_spinning"].string_value == "1")


def sha256_tree(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in repo.rglob("*") if p.is_file()}


@pytest.fixture
def fake(monkeypatch):
    def install(repo: Path, throughput: dict) -> FakeTriton:
        f = FakeTriton(repo, throughput)
        monkeypatch.setattr(tune_module, "TritonServer", f.server)
        monkeypatch.setattr(tune_module, "perf", f.perf)
        return f
    return install


def test_tune_refuses_a_directory_that_is_not_a_built_repository(tmp_path):
    with pytest.raises(CompilerError, match=f"{tmp_path} is not a built repository \\(manifest.json"):
        tune(TuneConfig(repo=tmp_path))


@pytest.fixture(scope="module")
def python_build(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model for the python target with the baselines, budgeted for 2 cores: stca_split (which holds the history
    row cache) serves the ensemble; stca_fused, stca_naive, stca_torch and stca_inductor beside it."""
    out = tmp_path_factory.mktemp("tune") / "python"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(baselines=BASELINES, cpu_threads=CORES), verify=QUICK))
    return out


@pytest.fixture
def repo(python_build, tmp_path) -> Path:
    """A fresh copy of the python build for one test to tune."""
    return Path(shutil.copytree(python_build, tmp_path / "repo"))


# On 2 cores, with the row cache in stca_split: stca_split's four candidates are the plan's 2x1, 1x2, 1x1 and the plan's
# instances again (the cache holder never spins), stca_fused's 1x2, 2x1, 1x2 spinning and one two-thread instance
# (1x2 again); the fourth places both models as the first does, so three servers are measured.
EXPECTED_SWEEP = [{SPLIT: label(2, 1), FUSED: label(1, 2)},
                  {SPLIT: label(1, 2), FUSED: label(2, 1)},
                  {SPLIT: label(1, 1), FUSED: label(1, 2, spinning=True)}]
# stca serves most under the third, stca_fused under the second: each keeps its own
THROUGHPUT = {ENSEMBLE: [10.0, 12.0, 30.0, 8.0], FUSED: [20.0, 40.0, 5.0, 10.0]}


@pytest.mark.slow
def test_tune_measures_each_distinct_placement_of_the_served_models_once(repo, fake):
    f = fake(repo, THROUGHPUT)
    result = tune(TuneConfig(repo=repo, cpu_threads=CORES))
    assert [entry["placements"] for entry in result.sweep] == EXPECTED_SWEEP
    assert [{m: placement_of(c) for m, c in s["configs"].items()} for s in f.started] == EXPECTED_SWEEP  # what each copy held
    assert [(c["server"], c["model"], c["concurrency"]) for c in f.calls] == [
        (server, model, c) for server in range(3) for model in (ENSEMBLE, FUSED) for c in (1, 2, 4)]


@pytest.mark.slow
def test_each_copy_serves_only_the_tuned_models_with_graphs_hard_linked_and_never_touches_the_repositorys_configs(repo, fake):
    f = fake(repo, THROUGHPUT)
    tune(TuneConfig(repo=repo, cpu_threads=CORES))
    assert all(s["models"] == sorted([ENSEMBLE, SPLIT, FUSED]) for s in f.started)  # no stca_naive, stca_torch, stca_inductor
    assert f.linked == [True] * 3  # the graphs are hard links, not copies...
    assert all(then == f.originals for then in f.originals_then)  # ...yet writing each copy's configs left the repository's alone


@pytest.mark.slow
def test_each_tuned_model_keeps_the_budget_it_served_most_requests_under(repo, fake):
    fake(repo, THROUGHPUT)
    result = tune(TuneConfig(repo=repo, cpu_threads=CORES))
    # stca: 30 req/s x 1.5 (at concurrency 2) under the third candidate; stca_fused: 40 x 1.5 under the second
    assert [(e["throughput"][ENSEMBLE], e["at_concurrency"][ENSEMBLE]) for e in result.sweep] == [(15.0, 2), (18.0, 2), (45.0, 2)]
    assert placement_of(read_config(repo / SPLIT / "config.pbtxt")) == label(1, 1)
    assert placement_of(read_config(repo / FUSED / "config.pbtxt")) == label(2, 1)
    budget = json.loads((repo / "manifest.json").read_text())["thread_budget"]
    assert budget["chosen_by"] == "tune" and budget["cpu_threads"] == CORES
    assert budget["tuning"]["choice"] == {ENSEMBLE: {"candidate": 2, "throughput": 45.0}, FUSED: {"candidate": 1, "throughput": 60.0}}
    assert budget["placements"][SPLIT] == label(1, 1) and budget["placements"][FUSED] == label(2, 1)
    assert budget["tuning"]["sweep"] == result.sweep


@pytest.mark.slow
def test_tune_measures_on_the_load_it_is_given(repo, fake):
    f = fake(repo, THROUGHPUT)
    tune(TuneConfig(repo=repo, cpu_threads=CORES, history=20, candidates=4, requests=3, concurrency=(2,), window_requests=5,
                    protocol="grpc"))
    assert {(c["concurrency"], c["window_requests"], c["protocol"]) for c in f.calls} == {(2, 5, "grpc")}
    assert all(c["load"] == [([20], [4])] * 3 for c in f.calls)  # 3 requests of L=20, N=4 each
    budget = json.loads((repo / "manifest.json").read_text())["thread_budget"]["tuning"]
    assert (budget["load"], budget["candidates_per_request"], budget["requests"], budget["concurrency"]) == ("L=20", 4, 3, [2])


@pytest.mark.slow
def test_the_manifest_lists_the_sha256_of_every_file_after_the_configs_are_rewritten(repo, fake):
    before = json.loads((repo / "manifest.json").read_text())["files"]
    fake(repo, THROUGHPUT)
    tune(TuneConfig(repo=repo, cpu_threads=CORES))
    files = json.loads((repo / "manifest.json").read_text())["files"]
    assert files == {name: digest for name, digest in sha256_tree(repo).items() if name != "manifest.json"}
    changed = {name for name in files if files[name] != before.get(name)}
    assert changed == {f"{SPLIT}/config.pbtxt", f"{FUSED}/config.pbtxt"}  # the rewritten configs, and nothing else
    assert is_build(repo)  # still a build a later one may replace


@pytest.mark.slow
def test_tune_refuses_a_repository_without_a_cpu_thread_budget(repo):
    manifest = json.loads((repo / "manifest.json").read_text())
    del manifest["thread_budget"]  # as a GPU target's build records it
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompilerError, match="holds no CPU thread budget \\(built for a GPU target\\); nothing to tune"):
        tune(TuneConfig(repo=repo))


@pytest.mark.slow
def test_after_tune_the_manifest_records_the_budget_every_served_config_holds(repo, fake):
    fake(repo, {ENSEMBLE: [1.0] * 4, FUSED: [1.0] * 4})
    tune(TuneConfig(repo=repo, cpu_threads=4))  # a bigger serving machine than the build's
    placements = json.loads((repo / "manifest.json").read_text())["thread_budget"]["placements"]
    held = {m: read_config(repo / m / "config.pbtxt") for m in (SPLIT, FUSED, TORCH, INDUCTOR, NAIVE)}
    assert sum(g.count for g in held[NAIVE].instance_group) == placements[NAIVE]["instances"]
    for model in (SPLIT, FUSED, TORCH, INDUCTOR):
        assert placement_of(held[model]) == placements[model], model


@pytest.fixture(scope="module")
def onnxruntime_build(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model for the onnxruntime target on CPU: two halves (no stca_split), a request validator, no row cache."""
    out = tmp_path_factory.mktemp("tune") / "onnxruntime"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(target="onnxruntime", device="cpu", cpu_threads=CORES),
                      verify=QUICK))
    return out


@pytest.mark.slow
def test_the_halves_of_an_onnxruntime_repository_get_four_budgets_and_onnx_runtimes_own_thread_parameters(onnxruntime_build,
                                                                                                          tmp_path, fake):
    repo = Path(shutil.copytree(onnxruntime_build, tmp_path / "repo"))
    f = fake(repo, {ENSEMBLE: [10.0, 50.0, 20.0, 30.0]})
    result = tune(TuneConfig(repo=repo, cpu_threads=CORES))
    # Each half alike: the plan's 2x1, pipelined 1x1, shared cores 1x2, and ONNX Runtime's default 1x2 spinning
    halves = [label(2, 1), label(1, 1), label(1, 2), label(1, 2, spinning=True)]
    assert [entry["placements"] for entry in result.sweep] == [{ENCODER: h, SCORER: h} for h in halves]
    assert all(s["models"] == sorted([ENSEMBLE, "stca_request_validator", ENCODER, SCORER]) for s in f.started)
    for half in (ENCODER, SCORER):  # the second candidate served most: one single-threaded instance per half
        config = read_config(repo / half / "config.pbtxt")
        assert sum(g.count for g in config.instance_group) == 1
        assert config.parameters["intra_op_thread_count"].string_value == "1"
        assert "allow_spinning" not in config.parameters
