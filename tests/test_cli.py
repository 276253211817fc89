"""The command line (compiler/__main__.py): each command's arguments become the config its handler passes to the API,
bad values exit 2 with one line naming the flag, `--help` loads no torch, and the commands the docs quote still parse.
Nothing here builds, trains or serves."""

import argparse
import ast
import json
import re
import shlex
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from compiler.__main__ import (
    bench_config,
    build_config,
    calibrate_config,
    cut_config,
    demo_config,
    docs_config,
    main,
    parser,
    score_request,
    serve_config,
    train_config,
    tune_config,
)
from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.core.names import BASELINES, FUSED, TORCH

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "compiler" / "__main__.py"
COMMANDS = ("build", "tune", "cut", "calibrate", "train", "serve", "score", "bench", "demo", "docs")
MAX_FUNCTION_LINES = 40


def parse(*argv) -> argparse.Namespace:
    return parser().parse_args([str(a) for a in argv])


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """main() in this process, with the logger as it was afterwards (main configures it)."""
    handlers, level, propagate = log.handlers[:], log.level, log.propagate
    try:
        code = main([str(a) for a in argv])
    finally:
        log.handlers[:], log.level, log.propagate = handlers, level, propagate
    out, err = capsys.readouterr()
    return code, out, err


def test_every_function_of_the_cli_is_under_40_lines():
    tree = ast.parse(CLI.read_text())
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lengths = {f.name: f.end_lineno - f.lineno + 1 for f in functions}  # the def line to the last line
    assert set(lengths) >= {f"cmd_{c}" for c in COMMANDS} | {f"_{c}_parser" for c in COMMANDS}
    too_long = {name: n for name, n in lengths.items() if n >= MAX_FUNCTION_LINES}
    assert not too_long, f"functions of {MAX_FUNCTION_LINES} lines or more: {too_long}"


def test_every_command_has_a_parser_and_its_handler():
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert tuple(sub.choices) == COMMANDS
    for name, p in sub.choices.items():
        assert p.get_default("handler").__name__ == f"cmd_{name}"


# ------------------------------------------------------------------------------------------------ argument -> config


def test_build_config_carries_every_stage_option():
    cfg = build_config(parse("build", "--preset", "tiny", "--out", "r", "--precision", "int8", "--scorer-precision", "fp16",
                             "--calibration", "cal", "--int8-high-precision", "fp16", "--int8-form", "cpu", "--cut-dtype", "fp16",
                             "--attention", "auto", "--expected-candidates", "64", "--expected-history", "700", "--expected-hit-rate", "0.8", "--max-history",
                             "900", "--max-candidates", "300", "--opset", "17", "--cpu-threads", "4", "--instances", "2",
                             "--baselines", "--no-fused-attention", "--split-processes", "2", "--history-cache-bytes", "512M", "--history-cache-at",
                             "scorer", "--no-history-cache-skip", "--profile", "L=1:2:3,N=1:4:8", "--profile", "L=1:1:1,N=2:2:2", "--accept-accuracy-loss"))
    assert (cfg.out, cfg.preset, cfg.checkpoint, cfg.user_model) == (Path("r"), "tiny", None, None)
    assert (cfg.attention, cfg.expected_candidates, cfg.expected_history, cfg.expected_hit_rate, cfg.max_history, cfg.max_candidates,
            cfg.opset) == ("auto", 64, 700, 0.8, 900, 300, 17)
    p = cfg.precision
    assert (p.precision, p.encoder, p.scorer, p.calibration, p.int8_high_precision, p.int8_form, p.cut) == (
        "int8", None, "fp16", Path("cal"), "fp16", "cpu", "fp16")
    e = cfg.emit
    assert (e.target, e.cpu_threads, e.instances, e.baselines, e.split_processes, e.history_cache_bytes, e.history_cache_at,
            e.history_cache_skip, e.fused_attention) == ("python", 4, 2, BASELINES, 2, 512 << 20, "scorer", False, False)
    assert build_config(parse("build", "--baselines", "stca_fused,stca_torch")).emit.baselines == (FUSED, TORCH)
    assert [prof.dims for prof in cfg.engines.profiles] == [{"L": (1, 2, 3), "N": (1, 4, 8)}, {"L": (1, 1, 1), "N": (2, 2, 2)}]
    assert cfg.accept_accuracy_loss is True


def test_build_config_defaults_are_the_apis():
    from compiler.build import BuildConfig

    cfg, api = build_config(parse("build")), BuildConfig()
    assert (cfg.out, cfg.opset, cfg.expected_candidates, cfg.precision, cfg.emit, cfg.engines) == (
        api.out, api.opset, api.expected_candidates, api.precision, api.emit, api.engines)


def test_build_config_of_your_own_model():
    cfg = build_config(parse("build", "--onnx", "m.onnx", "--request-inputs", "history,user", "--candidate-axis", "1",
                             "--samples", "s.jsonl", "--input-range", "history=0:999", "--input-range", "item=-1:2.5"))
    spec = cfg.user_model
    assert (spec.onnx, spec.exported, spec.request_inputs, spec.candidate_axis, spec.samples) == (
        Path("m.onnx"), None, ("history", "user"), 1, Path("s.jsonl"))
    assert spec.input_ranges == {"history": (0.0, 999.0), "item": (-1.0, 2.5)}


def test_tune_config():
    cfg = tune_config(parse("tune", "--repo", "r", "--history-length", "500", "--candidates", "64", "--requests", "3",
                            "--concurrency", "1,8", "--cpu-threads", "6"))
    assert (cfg.repo, cfg.history, cfg.candidates, cfg.requests, cfg.concurrency, cfg.cpu_threads) == (
        Path("r"), 500, 64, 3, (1, 8), 6)
    assert tune_config(parse("tune")).concurrency == (1, 2, 4)


def test_cut_config_loads_and_splits_only():
    cfg = cut_config(parse("cut", "--preset", "paper", "--attention", "reordered", "--max-history", "300"))
    assert (cfg.preset, cfg.attention, cfg.max_history, cfg.user_model) == ("paper", "reordered", 300, None)
    spec = cut_config(parse("cut", "--exported", "din.pt2", "--request-inputs", "history")).user_model
    assert (spec.exported, spec.request_inputs, spec.samples, spec.input_ranges) == (Path("din.pt2"), ("history",), None, {})


def test_calibrate_config_is_the_model_the_set_is_for(tiny_checkpoint):
    from compiler.stca.model import preset

    assert calibrate_config(parse("calibrate")) == preset("small")
    clipped = calibrate_config(parse("calibrate", "--preset", "tiny", "--max-history", "300"))
    assert clipped == replace(preset("tiny"), max_history=300)
    assert calibrate_config(parse("calibrate", "--checkpoint", tiny_checkpoint)) == preset("tiny")
    args = parse("calibrate", "--out", "c", "--requests", "r.jsonl", "--count", "5", "--candidates", "9", "--seed", "3")
    assert (args.out, args.requests, args.count, args.candidates, args.seed) == (Path("c"), Path("r.jsonl"), 5, 9, 3)


def test_train_config():
    args = parse("train", "--out", "ck", "--preset", "tiny", "--attention", "reordered", "--steps", "7", "--seed", "5")
    cfg = train_config(args)
    assert (cfg.preset, cfg.attention, cfg.steps, cfg.seed, args.out) == ("tiny", "reordered", 7, 5, Path("ck"))


def test_serve_config():
    cfg = serve_config(parse("serve", "--repo", "r", "--host", "0.0.0.0", "--http-port", "9000", "--grpc-port", "9001",
                             "--metrics-port", "9002", "--tritonserver", "/bin/ts", "--log-verbose", "1"))
    assert (cfg.repo, cfg.host, cfg.http_port, cfg.grpc_port, cfg.metrics_port, cfg.tritonserver, cfg.log_verbose) == (
        Path("r"), "0.0.0.0", 9000, 9001, 9002, Path("/bin/ts"), 1)
    assert (serve_config(parse("serve")).http_url) == "127.0.0.1:8000"


def test_score_request_is_generated_at_the_asked_sizes_or_read_from_the_file(tmp_path):
    from compiler.core.contract import save_request, stca_contract
    from compiler.stca.model import preset

    contract = stca_contract(preset("tiny"))
    generated = score_request(parse("score", "--history-length", "37", "--candidates", "5", "--seed", "1"), contract)
    assert generated["history_item_ids"].shape == (37,) and generated["candidate_item_ids"].shape == (5,)
    save_request(tmp_path / "r.json", generated)
    read = score_request(parse("score", "--request", tmp_path / "r.json"), contract)
    assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist() for k, v in generated.items()}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CompilerError, match="bad.json"):
        score_request(parse("score", "--request", tmp_path / "bad.json"), contract)


def test_bench_config_splits_the_lists():
    cfg = bench_config(parse("bench", "--name", "n", "--out", "o", "--preset", "medium", "--no-tune", "--precisions", "fp32,fp16",
                             "--models", "stca", "--histories", "512,2000", "--candidates", "32", "--concurrency", "1,3",
                             "--window-requests", "5", "--cell-budget", "9.5", "--protocol", "grpc", "--max-history", "2000",
                             "--cut-dtype", "fp16", "--suites", "grid,repeated_users", "--repeated-users", "2",
                             "--repeated-visits", "3"))
    assert (cfg.name, cfg.out, cfg.preset, cfg.tune, cfg.precisions, cfg.models) == (
        "n", Path("o"), "medium", False, ("fp32", "fp16"), ("stca",))
    assert (cfg.histories, cfg.candidates, cfg.concurrency) == ((512, 2000), (32,), (1, 3))
    assert cfg.suites == ("grid", "repeated_users")
    assert (cfg.window_requests, cfg.cell_budget_s, cfg.protocol) == (5, 9.5, "grpc")
    assert (cfg.max_history, cfg.cut_dtype) == (2000, "fp16")
    assert (cfg.repeated.traffic.users, cfg.repeated.traffic.visits, cfg.repeated.concurrency) == (2, 3, (1, 3))


def test_bench_config_defaults_are_the_apis():
    from compiler.measure.bench import BenchConfig

    cfg, api = bench_config(parse("bench")), BenchConfig()
    for name in ("name", "out", "tune", "precisions", "models", "histories", "candidates", "concurrency", "suites",
                 "window_requests", "cell_budget_s", "protocol"):
        assert getattr(cfg, name) == getattr(api, name), name
    assert cfg.repeated == api.repeated


def test_demo_and_docs_configs(tmp_path, monkeypatch):
    assert demo_config(parse("demo")) == {"out": Path("triton_repo"), "checkpoint": None}
    assert demo_config(parse("demo", "--out", "o", "--checkpoint", "c")) == {"out": Path("o"), "checkpoint": Path("c")}
    monkeypatch.chdir(tmp_path)
    assert docs_config(parse("docs")) == {"root": tmp_path, "check": False}
    assert docs_config(parse("docs", "--check", "--root", "elsewhere")) == {"root": Path("elsewhere"), "check": True}


@pytest.fixture
def regenerate(monkeypatch):
    """compiler.measure.docs_tables with a regenerate() that records its calls and reports `calls.differ`."""
    calls = types.SimpleNamespace(args=[], differ=[])

    def fake(root: Path, check: bool = False) -> list[Path]:
        calls.args.append((root, check))
        return list(calls.differ)

    monkeypatch.setitem(sys.modules, "compiler.measure.docs_tables", types.SimpleNamespace(regenerate=fake))
    return calls


def test_docs_check_exits_1_and_names_the_docs_that_differ(regenerate, capsys, tmp_path):
    regenerate.differ = [tmp_path / "docs" / "benchmarks.md"]
    code, _, err = run_main(capsys, "docs", "--check", "--root", tmp_path)
    assert code == 1 and regenerate.args == [(tmp_path, True)]
    assert "benchmarks.md" in err and len(err.strip().splitlines()) == 1
    regenerate.differ = []
    assert run_main(capsys, "docs", "--check", "--root", tmp_path)[0] == 0


def test_docs_rewrites_and_exits_0(regenerate, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    regenerate.differ = [tmp_path / "docs" / "precision.md"]
    code, _, err = run_main(capsys, "docs")
    assert code == 0 and regenerate.args == [(tmp_path, False)] and "precision.md" in err


# ------------------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("argv, flag", [
    (["build", "--history-cache-bytes", "lots"], "--history-cache-bytes"),
    (["build", "--input-range", "history"], "--input-range"),
    (["build", "--int8-form", "gpu"], "--int8-form"),
    (["build", "--opset", "eighteen"], "--opset"),
    (["tune", "--concurrency", "1,x"], "--concurrency"),
    (["cut", "--attention", "auto"], "--attention"),
    (["calibrate", "--count", "many"], "--count"),
    (["train", "--out", "x", "--steps", "1e3"], "--steps"),
    (["train"], "--out"),
    (["serve", "--http-port", "eighty"], "--http-port"),
    (["score", "--protocol", "ftp"], "--protocol"),
    (["bench", "--histories", "512,long"], "--histories"),
    (["bench", "--cell-budget", "soon"], "--cell-budget"),
    (["demo", "--out"], "--out"),
    (["docs", "--root"], "--root"),
])
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0], errors


@pytest.mark.parametrize("argv, fragment", [
    (["cut", "--preset", "tiny", "--request-inputs", "history"], "--request-inputs goes with --onnx or --exported"),
    (["bench", "--candidate-axis", "1"], "--candidate-axis goes with --onnx or --exported"),
    (["build", "--preset", "tiny", "--checkpoint", "ck"], "--checkpoint or --preset, not both"),
    (["build", "--profile", "L=1"], "profile 'L=1'"),
    (["build", "--onnx", "m.onnx"], "--request-inputs"),
    (["build", "--onnx", "m.onnx", "--request-inputs", "h", "--input-range", "h=5:1"], "--input-range h=5.0:1.0"),
    (["bench", "--suites", "grid,speed"], "unknown suite(s) ['speed']"),
])
def test_a_refused_config_exits_2_with_one_line(argv, fragment, capsys):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and fragment in lines[0], lines


# ---------------------------------------------------------------------------------------------------------------- help


HELP_PROBE = """
import contextlib, io, json, sys
from compiler.__main__ import main
seen = {}
for command in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main([command, "--help"])
            code = None
        except SystemExit as e:
            code = e.code
    seen[command] = [code, "torch" in sys.modules, text.getvalue()]
print(json.dumps(seen))
"""


def test_help_of_every_command_exits_0_without_importing_torch():
    run = subprocess.run([sys.executable, "-c", HELP_PROBE, *COMMANDS], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    for command in COMMANDS:
        code, torch_loaded, text = seen[command]
        assert code == 0 and not torch_loaded, (command, code, torch_loaded)
        assert text.startswith(f"usage: python -m compiler {command}"), text[:80]
    assert "--history-cache-bytes BYTES" in seen["build"][2] and "--check" in seen["docs"][2]


# ----------------------------------------------------------------------------------------------- the docs' commands


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]


def quoted_command_lines() -> list[tuple[str, list[str]]]:
    """The command lines the docs and the Makefile show (`[...]` optional parts in, `a|b` as a)."""
    found = []
    for doc in DOCUMENTS:
        for line in doc.read_text().replace("\\\n", " ").splitlines():
            m = re.match(r"\s*(?:\.venv/bin/python|python|\$\(PY\)) -m compiler (.*)", line)
            if m:
                tokens = shlex.split(m.group(1).split(" #")[0].strip().rstrip("&"))
                tokens = [t.replace("[", "").replace("]", "").split("|")[0] for t in tokens if t != "|"]
                found.append((f"{doc.name}: {line.strip()}", [t for t in tokens if t]))
    return found


def quoted_in_prose() -> list[tuple[str, list[str]]]:
    """`python -m compiler ...` spans in the docs' text: a command and the flags it names."""
    found = []
    for doc in DOCUMENTS:
        for m in re.finditer(r"`(?:\.venv/bin/)?python -m compiler ([^`<]*)`", doc.read_text()):
            found.append((f"{doc.name}: {m.group(0)}", m.group(1).split()))
    return found


def test_the_docs_quote_commands_to_check():
    assert len(quoted_command_lines()) >= 20 and len(quoted_in_prose()) >= 10
    assert {c[0] for _, c in quoted_command_lines()} >= {"build", "tune", "serve", "score", "bench", "calibrate", "cut", "train",
                                                        "demo"}


@pytest.mark.parametrize("where, argv", quoted_command_lines(), ids=lambda x: x if isinstance(x, str) else None)
def test_every_command_line_the_docs_show_parses(where, argv):
    args = parser().parse_args(argv)
    assert args.command == argv[0]


@pytest.mark.parametrize("where, words", quoted_in_prose(), ids=lambda x: x if isinstance(x, str) else None)
def test_every_flag_the_docs_name_exists(where, words):
    sub = next(a for a in parser()._actions if a.dest == "command").choices
    assert words[0] in sub, where
    unknown = [w for w in words[1:] if w.startswith("--") and w not in sub[words[0]]._option_string_actions]
    assert not unknown, f"{where}: {unknown}"
