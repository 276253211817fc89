"""`python -m compiler build`: the artifacts, the manifest, and one-line errors that write nothing."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from compiler.core.names import SPLIT
from compiler.repository.manifest import read as read_manifest
from compiler.repository.reader import SPLIT_ENCODER_FILE, half_files

CLI = [sys.executable, "-m", "compiler"]


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("build") / "repo"
    result = run_cli("build", "--precision", "fp32", "--checkpoint", tiny_checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_build_writes_the_two_graphs_manifest_and_report(built):
    assert (built / SPLIT / "1" / SPLIT_ENCODER_FILE).is_file()  # the python target: both halves in one model
    assert (built / SPLIT / "1" / "model.onnx").is_file()
    assert (built / "report.md").read_text().startswith("# stca-compiler build report")
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["precision"] == "fp32"
    assert manifest["model_config"]["n_heads"] == 2
    assert {"python", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])


@pytest.mark.slow
def test_a_cpu_build_serves_every_scorer_attention_fused_and_says_so(built):
    encoder, scorer = (onnx.load(str(path)) for path in half_files(built))
    layers = json.loads((built / "manifest.json").read_text())["model_config"]["n_layers"]
    assert sum(n.op_type == "MultiHeadAttention" for n in scorer.graph.node) == layers
    assert not any(n.op_type == "Softmax" for n in scorer.graph.node)
    assert not any(n.domain for n in encoder.graph.node)  # the encoder attends to no candidate: as exported
    lint = {r["graph"]: r for r in json.loads((built / "manifest.json").read_text())["lint"]}
    assert lint["scorer"]["ok"] and lint["scorer"]["onnxruntime_nodes"] == layers
    assert f"scorer {layers} layers" in (built / "report.md").read_text()


@pytest.mark.slow
def test_manifest_verification_covers_the_required_cases_within_1e_4(built):
    v = json.loads((built / "manifest.json").read_text())["verification"]
    cases = {(c["L"], c["N"]) for c in v["cases"]}
    assert {(L, N) for L in (1, 7, 512, 10_000) for N in (1, 3, 256)} <= cases
    assert v["passed"] and v["max_abs_error"] <= 1e-4
    assert all(c["max_abs_error"] <= 1e-4 for c in v["cases"])


@pytest.mark.slow
def test_manifest_cut_lists_each_crossing_tensor_with_its_bytes(built):
    manifest = json.loads((built / "manifest.json").read_text())
    cut = {t["name"]: t for t in manifest["cut"]}
    assert cut["K_1"]["shape"] == ["L", 16] and cut["K_1"]["dtype"] == "float32"
    assert cut["K_1"]["bytes_per_request"] == 10_000 * 16 * 4
    assert cut["key_bias"]["bytes_per_request"] == 10_000 * 4 and cut["key_bias"]["shape"] == ["L"]
    encoder_outputs = {o.name for o in onnx.load(str(half_files(built)[0])).graph.output}
    assert encoder_outputs == set(cut) - {"history_item_ids"}  # the same names reach the served graphs


@pytest.mark.slow
def test_manifest_hashes_every_file_written(built):
    files = json.loads((built / "manifest.json").read_text())["files"]
    on_disk = {str(p.relative_to(built)) for p in built.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk
    for name, digest in files.items():
        assert hashlib.sha256((built / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.slow
def test_rebuilding_over_an_earlier_build_replaces_it(built, tiny_checkpoint, tmp_path):
    out = tmp_path / "again"  # short histories: what is tested is the replacing, not the graphs
    assert run_cli("build", "--checkpoint", tiny_checkpoint, "--max-history", "500", "--out", out, "--attention", "reordered").returncode == 0
    result = run_cli("build", "--checkpoint", tiny_checkpoint, "--max-history", "500", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["model_config"]["attention"] == "kv"
    assert not list(tmp_path.glob(".again*"))  # no temporary directory left behind


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last
    for fragment in fragments:
        assert fragment in last, last


def run_cli_here(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI in this process: argument and input errors need no fresh interpreter (one costs seconds of imports).
    An exception other than CompilerError propagates and fails the test, as a traceback would."""
    from compiler.__main__ import main
    from compiler.core.log import log

    handlers, level, propagate = log.handlers[:], log.level, log.propagate
    try:
        code = main([str(a) for a in args])
    finally:
        log.handlers[:], log.level, log.propagate = handlers, level, propagate
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["compiler", *map(str, args)], code, captured.out, captured.err)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--checkpoint", "/nonexistent/ckpt"], ["/nonexistent/ckpt", "no such directory"]),
        (["--preset", "huge"], ["unknown preset 'huge'"]),
        (["--precision", "fp8"], ["precision: 'fp8' is not one of"]),
        (["--target", "tpu"], ["target: 'tpu' is not one of"]),
        (["--opset", "23"], ["opset 23 is outside 17..20"]),
        (["--baselines", "stca_slow"], ["baselines: stca_slow not among stca_fused"]),
        (["--baselines", "stca_naive"], ["stca_naive scores each candidate through stca_fused; emit both"]),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path, capsys, args, fragments):
    out = tmp_path / "out"
    result = run_cli_here(capsys, "build", *args, "--out", out)
    assert_one_line_error(result, *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_history_cache_sizes_read_as_binary_units_and_a_bad_one_is_refused(capsys):
    from compiler.__main__ import parser

    read = lambda text: parser().parse_args(["build", "--history-cache-bytes", text]).history_cache_bytes  # noqa: E731
    assert (read("512M"), read("2G"), read("0"), read("4096")) == (512 << 20, 2 << 30, 0, 4096)
    with pytest.raises(SystemExit):
        read("lots")
    assert "'lots' is not a size in bytes" in capsys.readouterr().err


def test_cut_prints_the_crossing_tensors_and_the_row_cache(capsys):
    result = run_cli_here(capsys, "cut", "--preset", "tiny")
    assert result.returncode == 0
    row = 2 * 2 * 16 * 4 + 4  # K_i and V_i of both layers (D=16, fp32) and key_bias, per history item
    assert "| `K_1` |" in result.stdout
    assert f"{row:,} bytes a row" in result.stdout and "keyed on history_actions" in result.stdout


def test_truncated_and_mismatched_checkpoints(tmp_path, capsys, tiny_checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])
    assert_one_line_error(run_cli_here(capsys, "build", "--checkpoint", bad, "--out", tmp_path / "o1"), "truncated")
    meta = json.loads((tiny_checkpoint / "config.json").read_text())
    meta["model_config"]["n_layers"] = 3
    (bad / "config.json").write_text(json.dumps(meta))
    (bad / "model.safetensors").write_bytes(data)
    assert_one_line_error(run_cli_here(capsys, "build", "--checkpoint", bad, "--out", tmp_path / "o2"), "weights do not match its config")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_an_output_directory_that_is_not_a_build_is_left_alone(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli_here(capsys, "build", "--checkpoint", tiny_checkpoint, "--out", out)
    assert_one_line_error(result, str(out), "exists and is not an earlier build")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("build", "train", "serve", "score", "demo"):
        assert command in result.stdout


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("cal") / "set"
    result = run_cli("calibrate", "--checkpoint", tiny_checkpoint, "--count", "12", "--candidates", "64", "--max-history", "2000", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_fp16_build_passes_its_gate_and_reports_per_bucket(tmp_path, tiny_checkpoint):
    out = tmp_path / "fp16"
    result = run_cli("build", "--precision", "fp16", "--checkpoint", tiny_checkpoint, "--max-history", "4000", "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["verification"]["passed"]
    assert {c["L"] for c in manifest["verification"]["cases"]} >= {64, 1_000, 4_000}
    assert all(c["kendall_tau_mean"] >= 0.99 for c in manifest["verification"]["cases"] if c["N"] >= 16)
    assert manifest["precisions"]["encoder"]["kept_fp32"]["feeding_discontinuous_ops"]  # the age bucket
    assert (out / manifest["plots"]["error_vs_length"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![score error against history length](error_vs_length.png)" in (out / "report.md").read_text()
    assert all(r["ok"] for r in manifest["lint"])


@pytest.mark.slow
def test_int8_build_uses_the_given_calibration_set(tmp_path, tiny_checkpoint, tiny_calibration):
    out = tmp_path / "int8"
    result = run_cli("build", "--precision", "int8", "--checkpoint", tiny_checkpoint, "--max-history", "2000",
                     "--calibration", tiny_calibration, "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["verification"]["passed"]
    assert manifest["precisions"]["calibration"]["sha256"] == json.loads((tiny_calibration / "calibration.json").read_text())["sha256"]
    assert manifest["lint"][0]["qdq_pairs"] > 0 and manifest["precisions"]["scorer"]["attention_bmms_kept"]
    assert set(manifest["verification"]["auc"]) == {"finish", "skip", "like"}
    assert manifest["precisions"]["int8_form"] == "cpu"  # the python target serves on ONNX Runtime's CPU kernels
    assert manifest["precisions"]["encoder"]["form"] == manifest["precisions"]["scorer"]["form"] == "cpu"
    assert {t["dtype"] for t in manifest["cut"]} == {"float32"}  # one process: nothing to gain from narrowing the cut


@pytest.mark.slow
def test_a_missed_gate_writes_nothing_unless_accepted(tmp_path, tiny_checkpoint, monkeypatch):
    from compiler.build import BuildConfig, build
    from compiler.core.errors import CompilerError
    from compiler.verify.gates import THRESHOLDS, Thresholds, VerifyConfig

    monkeypatch.setitem(THRESHOLDS, "fp32", Thresholds(max_abs_error=0.0))  # a gate no real build meets
    cfg = BuildConfig(out=tmp_path / "out", checkpoint=tiny_checkpoint,
                      verify=VerifyConfig(lengths=(9,), candidates=(20,), requests_per_case=1, auc_requests=0))
    with pytest.raises(CompilerError, match=r"verify: the fp32 build misses its accuracy gate \(L=9 N=20: max abs error"):
        build(cfg)
    assert not (tmp_path / "out").exists()
    result = build(BuildConfig(**{**cfg.__dict__, "accept_accuracy_loss": True}))
    assert result.accepted_accuracy_loss and not result.verification.passed
    assert read_manifest(tmp_path / "out") == result.record  # manifest.json reads back as the typed record
    assert "Built with --accept-accuracy-loss" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_int8_without_a_calibration_set_makes_one_and_says_so(tmp_path, tiny_checkpoint):
    out = tmp_path / "int8"
    result = run_cli("build", "--precision", "int8", "--checkpoint", tiny_checkpoint, "--max-history", "1000",
                     "--accept-accuracy-loss", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "no --calibration given: generating 32 requests at KuaiRand-1K lengths" in result.stderr
    calibration = json.loads((out / "manifest.json").read_text())["precisions"]["calibration"]
    assert calibration["count"] == 32 and len(calibration["sha256"]) == 64


@pytest.mark.slow
def test_tensorrt_target_without_tensorrt_stops_at_once_and_auto_falls_back(tmp_path, tiny_checkpoint):
    assert_one_line_error(run_cli("build", "--target", "tensorrt", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "t"),
                          "TensorRT is not installed here")
    assert not (tmp_path / "t").exists()
    result = run_cli("build", "--target", "auto", "--checkpoint", tiny_checkpoint, "--max-history", "500", "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["target"] == "python"


def test_the_cpu_int8_form_is_refused_for_tensorrt(tmp_path, tiny_checkpoint, monkeypatch):
    """Where TensorRT is installed (pretended here: the refusal comes before any engine work) its plans take
    symmetric int8 only; the uint8 cpu form is refused by name, before anything is exported."""
    from compiler import build as build_module
    from compiler.core.errors import CompilerError
    from compiler.precision.convert import PrecisionConfig
    from compiler.repository.deployment import EmitConfig

    monkeypatch.setattr(build_module, "require_tensorrt", lambda: None)
    monkeypatch.setattr(build_module, "load_and_split", lambda *a: pytest.fail("exported before refusing"))
    cfg = build_module.BuildConfig(out=tmp_path / "o", checkpoint=tiny_checkpoint, emit=EmitConfig(target="tensorrt"),
                                   precision=PrecisionConfig("int8", int8_form="cpu"))
    with pytest.raises(CompilerError, match="int8 form cpu: TensorRT takes symmetric int8 only"):
        build_module.build(cfg)


@pytest.mark.slow
def test_an_int8_miss_keeps_the_most_harmful_layers_in_float_and_says_which(tmp_path, tiny_checkpoint, tiny_calibration, monkeypatch):
    """A gate no int8 build meets: the build keeps the layers that cost the ranking most in float, one a round, up to
    MAX_KEPT_FLOAT (compiler.precision.int8_fallback, whose loop tests/precision/test_int8_fallback.py checks round by
    round), then fails as any missed gate does; accepted, the manifest and the report name each kept layer, and in the
    served graphs those layers run float kernels on float weights."""
    from compiler.build import BuildConfig, build
    from compiler.core.errors import CompilerError
    from compiler.precision.convert import PrecisionConfig
    from compiler.precision.int8_fallback import MAX_KEPT_FLOAT
    from compiler.verify.gates import THRESHOLDS, Thresholds, VerifyConfig

    monkeypatch.setitem(THRESHOLDS, "int8", Thresholds(kendall_tau=1.01))  # unreachable
    cfg = BuildConfig(out=tmp_path / "out", checkpoint=tiny_checkpoint, max_history=500,
                      precision=PrecisionConfig("int8", calibration=tiny_calibration),
                      verify=VerifyConfig(lengths=(1, 300), candidates=(32,), requests_per_case=1, auc_requests=0))
    with pytest.raises(CompilerError, match="the int8 build misses its accuracy gate"):
        build(cfg)
    result = build(BuildConfig(**{**cfg.__dict__, "accept_accuracy_loss": True}))
    kept = result.precisions.int8_kept_float
    assert len(kept) == MAX_KEPT_FLOAT
    assert [k.layer.tau_deficit for k in kept] == sorted((k.layer.tau_deficit for k in kept), reverse=True)  # worst first
    assert all(k.why.startswith(f"kept after round {i + 1}") for i, k in enumerate(kept))
    assert read_manifest(tmp_path / "out").precisions.int8_kept_float == kept
    for half in {k.layer.half for k in kept}:
        graph = onnx.load(str(half_files(tmp_path / "out")[0 if half == "encoder" else 1]))
        weights = {init.name: init.data_type for init in graph.graph.initializer}
        for node in (n for n in graph.graph.node if n.name in {k.layer.node for k in kept if k.layer.half == half}):
            assert node.op_type in ("Gemm", "MatMul"), node.name  # not a quantized kernel
            assert weights.get(node.input[1]) == onnx.TensorProto.FLOAT, node.name  # its weight read in float, not dequantized
    assert all(k.layer.node in (tmp_path / "out" / "report.md").read_text() for k in kept)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_int8_and_its_gates_hold_on_a_demo_model_trained_from_another_seed(tmp_path):
    """Not only the one demo checkpoint: a demo-size model trained with seed 1 (other weights, other training
    requests) builds at int8 for the python target with every gate passed, the fallback free to keep layers."""
    from compiler.build import BuildConfig, build
    from compiler.precision.convert import PrecisionConfig
    from compiler.stca.train import TrainConfig, train

    checkpoint = train(TrainConfig(seed=1), tmp_path / "seed1").checkpoint  # 2-4.5 minutes on 2 cores: most of this test
    result = build(BuildConfig(out=tmp_path / "int8", checkpoint=checkpoint, precision=PrecisionConfig("int8")))
    v = result.verification
    assert v.passed and result.precisions.int8_form == "cpu"
    assert min(c.kendall_tau_mean for c in v.cases if c.N >= 16) >= 0.95
    assert all(abs(row["delta"]) <= 0.002 for row in v.auc.values())


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["projected", "direct"])
def test_a_checkpoint_of_either_fusion_form_builds_and_verifies_within_1e_4(tmp_path, fusion):
    """The paper's form and the earlier one (saved as older checkpoints are: no fusion field) both build."""
    from compiler.build import BuildConfig, build
    from compiler.stca.checkpoint import save_checkpoint, seeded_model
    from compiler.stca.model import preset
    from compiler.verify.gates import VerifyConfig

    path = save_checkpoint(seeded_model(preset("tiny", fusion=fusion), seed=5), tmp_path / "ckpt")
    if fusion == "direct":
        meta = json.loads((path / "config.json").read_text())
        del meta["model_config"]["fusion"]
        (path / "config.json").write_text(json.dumps(meta))
    result = build(BuildConfig(out=tmp_path / "out", checkpoint=path, max_history=2_000,
                               verify=VerifyConfig(lengths=(1, 64, 2_000), candidates=(3, 64), requests_per_case=1, auc_requests=0)))
    assert result.config.fusion == fusion and result.verification.passed and result.verification.max_abs_error <= 1e-4
