"""perf_analyzer (the real binary) against the real server, and the response-cache experiment, in seconds."""

import json

import pytest

from compiler.build import BuildConfig, build
from compiler.measure.bench import BenchConfig, cache_experiment, run
from compiler.measure.bench_report import speedups
from compiler.measure.perf import UnstableMeasurement, perf, write_input_file
from compiler.repository.deployment import EmitConfig
from compiler.runtime.row_cache import DEFAULT_HISTORY_CACHE_BYTES
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.checkpoint import load_config
from compiler.stca.data import sample_requests
from tests.e2e.conftest import QUICK_VERIFY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
TINY = BenchConfig(window_requests=6, cache_users=2, cache_repeats=4, mixed_candidates=8)


@pytest.mark.parametrize("model", ["stca", "stca_fused"])
def test_perf_analyzer_runs_and_its_csv_is_parsed(triton, tiny_checkpoint, tmp_path, model):
    config = load_config(tiny_checkpoint)
    requests = [r.inputs for r in sample_requests(config, [30, 80], seed=0, n_candidates=6)]
    inputs = write_input_file(tmp_path / "in.json", requests)
    assert len(json.loads(inputs.read_text())["data"]) == 2
    row = perf(model, triton.cfg.http_url, inputs, 2, tmp_path / "out.csv", **TINY.perf_settings())
    assert row["concurrency"] == 2 and row["throughput"] > 0
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["server_compute_ms"] > 0


def test_a_measurement_that_never_settles_is_retried_on_longer_windows_then_named(triton, tiny_checkpoint, tmp_path):
    config = load_config(tiny_checkpoint)
    inputs = write_input_file(tmp_path / "in.json", [next(sample_requests(config, [20], seed=0, n_candidates=4)).inputs])
    never_stable = {**TINY.perf_settings(), "stability_percentage": 0, "window_requests": 2}  # three windows of equal throughput: never
    with pytest.raises(UnstableMeasurement, match="stca_fused at concurrency 1: no 0% stable measurement in 5 windows of up to 8 requests"):
        perf("stca_fused", triton.cfg.http_url, inputs, 1, tmp_path / "out.csv", **never_stable)


def test_the_response_cache_answers_repeated_histories(tmp_path, tiny_checkpoint, served_repo):
    cached_repo = tmp_path / "cached"
    build(BuildConfig(out=cached_repo, checkpoint=tiny_checkpoint, emit=EmitConfig(response_cache=True), verify=QUICK_VERIFY))
    config = load_config(tiny_checkpoint)
    with TritonServer(ServerConfig.on_free_ports(cached_repo)) as cached, TritonServer(ServerConfig.on_free_ports(served_repo)) as plain:
        result = cache_experiment(cached.cfg.http_url, plain.cfg.http_url, cached.cfg.metrics_url, config, TINY, tmp_path)
    assert (result["hits"], result["misses"]) == (2 * 3, 2)  # every request but each user's first
    assert result["hit_rate"] == result["expected_hit_rate"] == 0.75
    assert result["throughput_cached"] > 0 and result["throughput_uncached"] > 0


def test_speedups_compare_best_throughputs_of_the_same_load():
    def cell(model, load, throughputs):
        return {"precision": "fp32", "model": model, "load": load, "history": 100, "candidates": 8,
                "rows": [{"concurrency": i + 1, "throughput": t} for i, t in enumerate(throughputs)], "dropped": ""}
    results = {"cells": [cell("stca", "L=100 N=8", [10, 30]), cell("stca_fused", "L=100 N=8", [20, 15]),
                         cell("stca_naive", "L=100 N=8", [1, 2]), {**cell("stca_torch", "L=100 N=8", []), "dropped": "slow"}]}
    [row] = speedups(results)
    assert (row["stca_fused"], row["stca_naive"], row["stca_torch"]) == (1.5, 15.0, None)


def test_a_tiny_benchmark_run_measures_every_cell_and_writes_tables_and_plots(tiny_checkpoint, tmp_path):
    models = ("stca", "stca_fused", "stca_naive")
    cfg = BenchConfig(name="tiny", out=tmp_path / "results", work=tmp_path / "work", checkpoint=tiny_checkpoint,
                      precisions=("fp32",), models=models, histories=(16,), candidates=(4,), concurrency=(1,),
                      window_requests=4, mixed_candidates=4, cache_users=2, cache_repeats=2, max_history=64, verify=QUICK_VERIFY,
                      tune=False)  # tune has its own test (tests/e2e/test_tune.py)
    out = run(cfg)
    results = json.loads((out / "results.json").read_text())
    cells = {(c["model"], c["load"]): c for c in results["cells"]}
    mixed = next(c["load"] for c in results["cells"] if c["load"].startswith("mixed"))
    assert set(cells) == {(m, load) for m in models for load in ("L=16 N=4", mixed)}
    # the ceiling is the best of the two libraries, measured before and again after the cells
    assert set(results["gemm_peaks"]) == set(results["gemm_peaks_after"]) == {"onnxruntime", "torch"}
    assert results["gemm_peak_flops"] == max([*results["gemm_peaks"].values(), *results["gemm_peaks_after"].values()])
    for cell in cells.values():
        [row] = cell["rows"]
        assert row["concurrency"] == 1 and row["throughput"] > 0 and row["fraction_of_peak"] > 0 and not cell["dropped"]
        stages = {t["model"]: t for t in row["stages"]}  # Triton's statistics for the models that served the cell
        expected = {"stca": {"stca_split"}, "stca_fused": {"stca_fused"}, "stca_naive": {"stca_naive", "stca_fused"}}[cell["model"]]
        assert set(stages) == expected and all(t["compute_infer_ms"] > 0 for t in stages.values())
        if cell["model"] == "stca":  # both halves ran in stca_split's process, each timed there
            halves = row["split_halves_ms"]
            assert halves["encoder"] > 0 and halves["scorer"] > 0
            assert halves["encoder"] + halves["scorer"] <= stages["stca_split"]["compute_infer_ms"]
    naive = {t["model"]: t for t in cells[("stca_naive", "L=16 N=4")]["rows"][0]["stages"]}
    assert naive["stca_fused"]["requests"] == 4 * naive["stca_naive"]["requests"]  # N=4 calls of the fused model each
    assert cells[("stca_naive", "L=16 N=4")]["flops_per_request"] > cells[("stca", "L=16 N=4")]["flops_per_request"]
    assert cells[("stca", "L=16 N=4")]["flops_per_request"] == cells[("stca_fused", "L=16 N=4")]["flops_per_request"]
    assert (results["response_cache"]["hits"], results["response_cache"]["misses"]) == (2, 2)
    assert {r["candidates"] for r in results["attention_check"]} == {4, 8, 16, 32, 64, 128, 512}
    # the repeated-users suite: which variants sent each distinct history row once, and the rows each level sent
    variants = results["repeated_users"]["variants"]
    assert variants["row cache, one process"]["multiplicity"] == "key_bias" and variants["no cache"]["multiplicity"] is None
    assert all(row["history_rows"] >= row["cache"]["hits"] + row["cache"]["misses"] > 0 for row in variants["row cache"]["rows"])
    # stca_split's instances share one populated cache: its region is counted once, outside each process's own memory
    one_process = variants["row cache, one process"]
    assert len(one_process["memory_after"]) == 2 and min(one_process["memory_after"]) > 0
    assert one_process["shared_before"] >= DEFAULT_HISTORY_CACHE_BYTES > max(one_process["memory_after"])
    # the variants served side by side, level by level in turn: every level-k window starts after every level-(k-1) one
    starts = [[v["rows"][k]["started_s"] for v in variants.values()] for k in range(len(variants["fused"]["rows"]))]
    assert len(starts) > 1 and all(max(earlier) < min(later) for earlier, later in zip(starts, starts[1:]))
    assert all(r["predicted"] in ("kv", "reordered") and r["kv_ms"] > 0 for r in results["attention_check"])
    table = (out / "results.md").read_text()
    assert "| L=16 N=4 | stca |" in table and "| fp32 | L=16 N=4 |" in table  # the per-cell and speedup tables
    assert "| fp32 | L=16 N=4 | 1 |" in table  # the breakdown table: a row per load at concurrency 1
    for plot in ("throughput_vs_concurrency.png", "latency_vs_history.png", "speedup.png", "breakdown.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
