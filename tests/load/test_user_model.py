"""The user's own model (compiler.load.user_model): a DIN-style and a two-tower model, each as an ONNX file and as an
ExportedProgram, through the whole build; and the refusals, each one line that names the problem."""

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compiler.build import BuildConfig, build
from compiler.core.contract import Contract
from compiler.core.errors import CompilerError
from compiler.core.names import BASELINES, ENCODER, SCORER
from compiler.load.user_model import UserModelSpec, load_user_model
from compiler.precision.convert import PrecisionConfig
from compiler.repository.deployment import EmitConfig
from compiler.repository.reader import half_files
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.verify.gates import THRESHOLDS, VerifyConfig
from tests.models import ranking_model, ranking_program

QUICK = VerifyConfig(lengths=(1, 64, 600), candidates=(1, 40), requests_per_case=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{(model, form): (path, request inputs)} for din and two_tower, as .onnx and as .pt2."""
    directory = tmp_path_factory.mktemp("user-models")
    found = {}
    for name in ("din", "two_tower"):
        graph, request_inputs = ranking_model(name)
        onnx.save(graph, str(directory / f"{name}.onnx"))
        program, _ = ranking_program(name)
        torch.export.save(program, str(directory / f"{name}.pt2"))
        found[name, "onnx"] = (directory / f"{name}.onnx", tuple(sorted(request_inputs)))
        found[name, "exported"] = (directory / f"{name}.pt2", tuple(sorted(request_inputs)))
    return found


def spec(files, name, form, **fields) -> UserModelSpec:
    path, request_inputs = files[name, form]
    return UserModelSpec(**{form: path}, request_inputs=request_inputs, **fields)


def user_build(tmp_path, files, name, form, precision="fp32", **fields):
    return build(BuildConfig(out=tmp_path / f"{name}-{form}-{precision}", user_model=spec(files, name, form, **fields),
                             precision=PrecisionConfig(precision), verify=QUICK, emit=EmitConfig(baselines=BASELINES)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("form", ["onnx", "exported"])
@pytest.mark.parametrize("name", ["din", "two_tower"])
def test_the_users_model_builds_and_its_repository_scores_as_the_model_does(tmp_path, files, name, form, precision):
    result = user_build(tmp_path, files, name, form, precision)
    assert result.verification.passed, result.verification.failures
    assert result.model is None and result.source.kind == form
    contract = result.contract
    assert set(contract.request_inputs) == set(files[name, form][1]) and contract.candidate_inputs == ("candidate_item_ids",)
    # the split is reported: what crosses, and it crosses per history item (both models hoist a history projection)
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert Contract.from_dict(manifest["contract"]) == contract and "model_config" not in manifest
    assert manifest["cut"] and all(t["shape"][0] == contract.history_dim for t in manifest["cut"] if name == "din")
    assert "## The cut" in (result.out / "report.md").read_text()
    # the emitted graphs, run as the ensemble runs them, against the user's own fp32 model
    served = SplitRunner(*(OrtGraph(path) for path in half_files(result.out)))
    reference = load_user_model(spec(files, name, form))
    gate = THRESHOLDS["fp32"].max_abs_error if precision == "fp32" else 5e-3
    for request in reference.requests([1, 300], 50, seed=5):
        assert np.abs(served.score(request.inputs) - reference.reference(request.inputs)).max() <= gate
    # the row cache where the encoder is row-local (DIN), and the reason where not (the two-tower pools the history)
    record = result.history_cache
    assert record.row_local == (name == "din"), record
    if name == "two_tower":
        assert "ReduceMean" in record.why


def test_samples_drive_verification_and_declared_ranges_are_checked(tmp_path, files):
    path, request_inputs = files["din", "onnx"]
    samples = tmp_path / "requests.jsonl"
    rng = np.random.default_rng(0)
    lines = [json.dumps({"history_item_ids": rng.integers(1, 500, L).tolist(), "candidate_item_ids": rng.integers(1, 500, 30).tolist()})
             for L in (5, 40, 700)]
    samples.write_text("\n".join(lines) + "\n")
    result = user_build(tmp_path, files, "din", "onnx", samples=samples, input_ranges={"candidate_item_ids": (1, 499)})
    assert result.verification.passed
    assert "from 3 sample request(s)" in (result.out / "report.md").read_text()
    spec_of = result.contract.specs["candidate_item_ids"]
    assert (spec_of.low, spec_of.high) == (1, 499)
    requests = result.subject.requests([64], 10, seed=0)  # a sample's rows repeated or cut to the case's sizes
    assert requests[0].inputs["history_item_ids"].shape == (64,) and set(requests[0].inputs["history_item_ids"]) <= set(range(1, 500))


class NoCandidateUse(nn.Module):
    """Its output reads only the history: there is nothing per candidate to score."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 4)

    def forward(self, history_item_ids, candidate_item_ids):
        return torch.sigmoid(self.embedding(history_item_ids % 50).mean(0))


class BestCandidate(nn.Module):
    """Reads every candidate but answers one number per request (the best score): no candidate axis to rank along."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 4)

    def forward(self, history_item_ids, candidate_item_ids):
        h, c = self.embedding(history_item_ids % 50).mean(0), self.embedding(candidate_item_ids % 50)
        return torch.sigmoid(c @ h).max().reshape(1)


def test_an_output_without_a_candidate_axis_is_gated_on_error_and_says_so(tmp_path):
    from tests.models import export_small

    graph = export_small(BestCandidate(), {"history_item_ids": np.arange(1, 9), "candidate_item_ids": np.arange(3, 7)},
                         {"history_item_ids": {0: "L"}, "candidate_item_ids": {0: "N"}})
    onnx.save(graph, str(tmp_path / "best.onnx"))
    result = build(BuildConfig(out=tmp_path / "repo", user_model=UserModelSpec(onnx=tmp_path / "best.onnx", request_inputs=("history_item_ids",)),
                               precision=PrecisionConfig("fp16"), verify=QUICK))
    v = result.verification
    assert result.contract.output_candidate_axis is None
    assert v.thresholds.kendall_tau is None and v.thresholds.max_abs_error == 1e-2 and v.passed
    assert "no candidate axis" in v.note and "no candidate axis" in (result.out / "report.md").read_text()


def test_refusals_name_the_problem_in_one_line(tmp_path, files):
    with pytest.raises(CompilerError, match=r"^--request-inputs: \['history_ids'\] are not inputs of the model; its inputs are "
                                            r"\['history_item_ids', 'candidate_item_ids'\]$"):
        load_user_model(UserModelSpec(onnx=files["din", "onnx"][0], request_inputs=("history_ids",)))
    with pytest.raises(CompilerError, match=r"^--request-inputs: every input of the model is per request"):
        load_user_model(UserModelSpec(onnx=files["din", "onnx"][0], request_inputs=("history_item_ids", "candidate_item_ids")))
    with pytest.raises(CompilerError, match=r"^--input-range: \['price'\] are not inputs"):
        load_user_model(UserModelSpec(onnx=files["din", "onnx"][0], request_inputs=("history_item_ids",), input_ranges={"price": (0, 1)}))
    with pytest.raises(CompilerError, match=r"no such file"):
        load_user_model(UserModelSpec(onnx=tmp_path / "missing.onnx", request_inputs=("x",)))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CompilerError, match=r"junk.onnx is not an ONNX model"):
        load_user_model(UserModelSpec(onnx=tmp_path / "junk.onnx", request_inputs=("x",)))
    from tests.models import export_small

    graph = export_small(NoCandidateUse(), {"history_item_ids": np.arange(1, 9), "candidate_item_ids": np.arange(3, 7)},
                         {"history_item_ids": {0: "L"}, "candidate_item_ids": {0: "N"}})
    onnx.save(graph, str(tmp_path / "no_candidates.onnx"))
    with pytest.raises(CompilerError, match=r"^partition: output 'scores' does not depend on any candidate input"):
        build(BuildConfig(out=tmp_path / "never", user_model=UserModelSpec(onnx=tmp_path / "no_candidates.onnx",
                                                                             request_inputs=("history_item_ids",))))
    assert not (tmp_path / "never").exists()


def test_the_cli_refuses_with_one_line(tmp_path, files, capsys):
    from compiler.__main__ import main

    assert main(["build", "--onnx", str(files["din", "onnx"][0]), "--request-inputs", "nope", "--out", str(tmp_path / "r")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "['nope'] are not inputs of the model" in errors[0]
    assert main(["build", "--request-inputs", "x", "--out", str(tmp_path / "r")]) == 2  # STCA's build has no request inputs to name
    assert "--request-inputs goes with --onnx or --exported" in capsys.readouterr().err


def test_the_onnxruntime_target_puts_the_users_contract_in_front_of_the_cpp_backend(tmp_path, files):
    """That backend cannot run here: the configs parse with Triton's schema, and the validator step carries the contract."""
    from compiler.core.names import ENSEMBLE, VALIDATOR
    from compiler.repository.reader import read_config
    from compiler.repository.writer import VALIDATED_PREFIX

    result = build(BuildConfig(out=tmp_path / "ort", user_model=spec(files, "din", "onnx", input_ranges={"candidate_item_ids": (0, 499)}),
                               verify=QUICK, emit=EmitConfig(target="onnxruntime", device="cpu")))
    validator, ensemble = read_config(result.out / VALIDATOR / "config.pbtxt"), read_config(result.out / ENSEMBLE / "config.pbtxt")
    carried = Contract.from_dict(json.loads(validator.parameters["request_contract"].string_value))
    assert carried == result.contract and carried.specs["candidate_item_ids"].high == 499
    assert [o.name for o in validator.output] == [VALIDATED_PREFIX + "history_item_ids", VALIDATED_PREFIX + "candidate_item_ids"]
    assert ensemble.ensemble_scheduling.step[0].model_name == VALIDATOR
    for model in (ENCODER, SCORER):
        assert read_config(result.out / model / "config.pbtxt").platform == "onnxruntime_onnx"
