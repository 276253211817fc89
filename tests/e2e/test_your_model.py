"""The user's own model through tritonserver: docs/your_model.md as written, and the DIN-style and two-tower test models
from an ONNX file and from an ExportedProgram, served and scored against the model itself."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tritonclient.utils import InferenceServerException

from compiler.__main__ import main
from compiler.build import BuildConfig, build
from compiler.core.names import FUSED, NAIVE
from compiler.load.user_model import UserModelSpec, load_user_model
from compiler.measure.bench import BenchConfig
from compiler.measure.perf import perf, write_input_file
from compiler.precision.convert import PrecisionConfig
from compiler.repository.deployment import EmitConfig
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from tests.e2e.conftest import QUICK_VERIFY
from tests.models import ranking_model, ranking_program

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
DOC = Path(__file__).parents[2] / "docs" / "your_model.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def doc_command(verb: str) -> list[str]:
    """The arguments of the docs' `python -m compiler <verb> ...` line."""
    line = next(line for block in doc_blocks("bash") for line in block.splitlines() if line.startswith(f"python -m compiler {verb} "))
    return shlex.split(line.rstrip("&"))[3:]


def test_the_worked_example_builds_serves_scores_and_benchmarks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(doc_blocks("python")[0], str(DOC), "exec"), {"__name__": "docs_example"})  # writes din.pt2 and din.onnx
    assert main(doc_command("build")) == 0
    repo = tmp_path / "din_repo"
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["verification"]["passed"] and manifest["source"]["kind"] == "exported"
    assert [t["shape"] for t in manifest["cut"]] == [[manifest["contract"]["history_dim"], 16]]  # the projected history, as the doc says
    assert manifest["history_cache"]["served"]
    reference = load_user_model(UserModelSpec(exported=tmp_path / "din.pt2", request_inputs=("history",)))
    assert main(["build", "--onnx", "din.onnx", "--request-inputs", "history", "--out", "din_onnx_repo"]) == 0  # the same, from ONNX
    capsys.readouterr()
    with TritonServer(ServerConfig.on_free_ports(repo)) as server:
        assert main([*doc_command("score"), "--url", server.cfg.http_url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:2] == ["rank", "sigmoid"] and "item id" not in table[0]  # no candidate_item_ids: positions
        scores = [float(line.split(":")[1]) for line in table[2:12]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        client = ScoringClient(server.cfg.http_url)
        for request in reference.requests([1, 2_000], 100, seed=3):
            np.testing.assert_allclose(client.score(request.inputs), reference.reference(request.inputs), rtol=0, atol=1e-4)
        bad = reference.requests([10], 5, seed=4)[0].inputs
        bad["candidates"][2] = 1_000  # past the embedding table: refused with the input named, as --input-range declared
        with pytest.raises(InferenceServerException, match=r"candidates: value 1000 is outside 0\.\.999"):
            client.infer(bad)
    small = ["--histories", "16", "--candidates", "4", "--concurrency", "1", "--window-requests", "4", "--no-tune",
             "--precisions", "fp32", "--max-history", "64", "--out", str(tmp_path / "results")]
    assert main([*doc_command("bench"), *small]) == 0
    results = json.loads((tmp_path / "results" / "din" / "results.json").read_text())
    measured = {c["model"] for c in results["cells"] if c["rows"] and c["rows"][0]["throughput"] > 0}
    assert measured == {"stca", "stca_fused", "stca_naive"}  # the eager baseline is STCA's
    assert "| L=16 N=4 | stca |" in (tmp_path / "results" / "din" / "results.md").read_text()


@pytest.mark.parametrize("name, form, precision", [("din", "onnx", "fp32"), ("din", "exported", "fp16"),
                                                   ("two_tower", "onnx", "fp16"), ("two_tower", "exported", "fp32")])
def test_the_test_models_serve_as_they_score_in_pytorch(tmp_path, name, form, precision):
    if form == "onnx":
        graph, request_inputs = ranking_model(name)
        onnx.save(graph, str(tmp_path / "model.onnx"))
    else:
        program, request_inputs = ranking_program(name)
        torch.export.save(program, str(tmp_path / "model.pt2"))
    spec = UserModelSpec(**{form: tmp_path / ("model.onnx" if form == "onnx" else "model.pt2")}, request_inputs=tuple(sorted(request_inputs)))
    result = build(BuildConfig(out=tmp_path / "repo", user_model=spec, precision=PrecisionConfig(precision),
                               emit=EmitConfig(baselines=(FUSED, NAIVE)), verify=QUICK_VERIFY))
    atol = 1e-4 if precision == "fp32" else 5e-3
    with TritonServer(ServerConfig.on_free_ports(result.out)) as server:
        for request in result.subject.requests([1, 700], 30, seed=8):
            expected = result.subject.reference(request.inputs)
            for model in ("stca", "stca_fused", "stca_naive"):
                got = ScoringClient(server.cfg.http_url, model=model).score(request.inputs)
                np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{model} {name} {form} {precision}")
        # a small bench: the real perf_analyzer on the model's own requests, split and unsplit
        inputs = write_input_file(tmp_path / "load.json", [r.inputs for r in result.subject.requests([50, 400], 16, seed=9)])
        for model in ("stca", "stca_fused"):
            row = perf(model, server.cfg.http_url, inputs, 1, tmp_path / "perf.csv", **BenchConfig(window_requests=4).perf_settings())
            assert row["throughput"] > 0 and row["server_compute_ms"] > 0
