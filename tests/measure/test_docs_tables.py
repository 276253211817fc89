"""The docs' numbers are the recorded runs' numbers: compiler.measure.docs_tables against the repository's own README,
docs and benchmarks/results, and against small copies of them in tmp_path (the real docs are never edited here)."""

import json
import re
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from compiler import __main__ as cli
from compiler.core.errors import CompilerError
from compiler.measure import bench, bench_report
from compiler.measure.docs_tables import RESULTS, regenerate, render

ROOT = Path(__file__).resolve().parents[2]
RUNS = sorted(p.parent.name for p in (ROOT / RESULTS).glob("*/results.json") if "suite" not in json.loads(p.read_text()))  # `compiler bench`'s
RUN = "repeated-users-demo"  # the copies' run: two plots, so regenerating it draws little
GRID_ONLY = ("models", "histories", "candidates", "cell_budget_s")  # config fields only the grid suite reads


def recorded(run: str) -> dict:
    return json.loads((ROOT / RESULTS / run / "results.json").read_text())


def test_every_doc_and_results_md_is_what_its_run_gives():
    """`python -m compiler docs --check`: a number typed by hand between markers, or a run re-recorded without
    regenerating, fails here."""
    assert regenerate(ROOT, check=True) == []


@pytest.fixture
def tree(tmp_path) -> Path:
    """A repository root with one recorded run (its results.json, results.md and plots) and one doc that shows it."""
    shutil.copytree(ROOT / RESULTS / RUN, tmp_path / RESULTS / RUN)
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "runs.md"
    doc.write_text(render(tmp_path, doc, "# Runs\n\nHand-written prose stays.\n\n"
                          f"<!-- results:{RUN}:headline-repeated -->\n<!-- /results -->\n\nMore prose.\n\n"
                          f"<!-- results:{RUN}:summary -->\nstale text\n<!-- /results -->\n"))
    return tmp_path


def test_a_block_whose_text_was_edited_is_reported_and_rewritten(tree):
    doc = tree / "docs" / "runs.md"
    good = doc.read_text()
    assert "Hand-written prose stays." in good and "stale text" not in good
    headline = next(line for line in good.splitlines() if line.startswith("**Returning users"))
    ratio = re.search(r"\*\*[0-9.]+x\*\*", headline).group()  # repeated-users-demo's stca over stca_fused, as recorded
    edited = good.replace(ratio, "**1234.00x**")
    doc.write_text(edited)
    assert regenerate(tree, check=True) == [doc]
    assert doc.read_text() == edited  # check writes nothing
    assert regenerate(tree) == [doc]
    assert doc.read_text() == good


def test_regenerating_twice_changes_nothing_the_second_time(tree):
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert regenerate(tree) == []
    assert regenerate(tree, check=True) == []
    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before


def test_results_md_edited_by_hand_is_reported(tree):
    md = tree / RESULTS / RUN / "results.md"
    md.write_text(md.read_text().replace("0.93 / 0.94 / 0.94", "0.99 / 0.99 / 0.99", 1))
    assert regenerate(tree, check=True) == [md]


def test_a_plot_with_nothing_to_draw_is_not_written_and_a_stale_one_is_removed(tree):
    stale = tree / RESULTS / RUN / "speedup.png"  # a repeated-users run has no grid: nothing to draw a speedup from
    shutil.copy(tree / RESULTS / RUN / "repeated_users.png", stale)
    assert regenerate(tree, check=True) == [stale]
    assert regenerate(tree) == [stale]
    assert not stale.exists()
    assert "speedup.png" not in bench_report.plot_files(recorded("demo-cpu-int8"))  # stca alone: no baseline to divide by
    assert not (ROOT / RESULTS / "demo-cpu-int8" / "speedup.png").exists()


def bad_doc(tree: Path, marker: str) -> Path:
    doc = tree / "docs" / "bad.md"
    doc.write_text(f"# Bad\n\n{marker}\n<!-- /results -->\n")
    return doc


@pytest.mark.parametrize("marker, why", [
    (f"<!-- results:{RUN}:speedups-by-moon -->", "unknown table kind 'speedups-by-moon'"),
    ("<!-- results:no-such-run:summary -->", "no recorded run 'no-such-run'"),
    (f"<!-- results:{RUN}:int8 -->", f"run '{RUN}' measured no model in both fp32 and int8"),
    (f"<!-- results:{RUN} summary -->", "is not a results marker"),
])
def test_a_bad_marker_raises_naming_the_file_line_and_marker(tree, marker, why):
    doc = bad_doc(tree, marker)
    runs_md = (tree / "docs" / "runs.md").read_text()
    with pytest.raises(CompilerError) as e:
        regenerate(tree)
    assert "docs/bad.md:3" in str(e.value) and marker in str(e.value) and why in str(e.value)
    assert doc.read_text() == f"# Bad\n\n{marker}\n<!-- /results -->\n"  # nothing written, in any doc
    assert (tree / "docs" / "runs.md").read_text() == runs_md


def test_an_unclosed_block_raises(tree):
    doc = tree / "docs" / "bad.md"
    doc.write_text(f"<!-- results:{RUN}:summary -->\ntext\n<!-- results:{RUN}:memory -->\n<!-- /results -->\n")
    with pytest.raises(CompilerError, match=r"docs/bad.md:1: .* is not closed by <!-- /results --> before line 3"):
        regenerate(tree, check=True)


def test_a_marker_inside_a_code_fence_is_text(tree):
    doc = tree / "docs" / "syntax.md"
    text = "```\n<!-- results:RUN:KIND -->\n<!-- /results -->\n```\n"
    doc.write_text(text)
    assert regenerate(tree, check=True) == []


@pytest.mark.parametrize("run", RUNS)
def test_the_reproduce_command_makes_the_recorded_config(monkeypatch, run):
    """Each recorded run's command, parsed by the real command line, builds the BenchConfig the run recorded: every field
    the run could have read (the grid's only where it measured the grid, the repeated-users traffic only where it ran
    that suite; a run recorded before bench had suites gets the suites whose results it holds)."""
    r = recorded(run)
    command = bench_report.reproduce_command(r)
    words = shlex.split(command)
    assert words[:4] == [".venv/bin/python", "-m", "compiler", "bench"]
    made = []
    monkeypatch.setattr(bench, "run", made.append)
    args = cli.parser().parse_args(words[3:])
    args.handler(args)
    (cfg,) = made
    got, want = bench._jsonable(asdict(cfg)), r["config"]
    suites = bench_report.run_suites(r)
    assert got["suites"] == suites
    skip = {"suites"} | (set() if "grid" in suites else set(GRID_ONLY)) | (set() if "repeated_users" in suites else {"repeated"})
    assert {k: got[k] for k in want if k not in skip} == {k: v for k, v in want.items() if k not in skip}
    assert f"Reproduce: `{command}`" in (ROOT / RESULTS / run / "results.md").read_text()


def test_options_no_recorded_run_used_are_written_back_as_given(monkeypatch):
    """Your own model, a checkpoint-free run without tuning over gRPC into another folder: the command carries each."""
    r = recorded("demo-cpu")
    r["config"].update(tune=False, protocol="grpc", out="elsewhere", max_history=4000, cut_dtype="fp16", suites=["grid"],
                       user_model={"onnx": "din model.onnx", "exported": None, "request_inputs": ["history", "user"],
                                   "candidate_axis": 1, "samples": None, "input_ranges": {"history": [0.0, 99999.0]}})
    command = bench_report.reproduce_command(r)
    assert "'din model.onnx'" in command  # quoted for the shell
    made = []
    monkeypatch.setattr(bench, "run", made.append)
    args = cli.parser().parse_args(shlex.split(command)[3:])
    args.handler(args)
    got = bench._jsonable(asdict(made[0]))
    assert {k: got[k] for k in ("tune", "protocol", "out", "max_history", "cut_dtype", "suites", "user_model")} == \
        {k: r["config"][k] for k in ("tune", "protocol", "out", "max_history", "cut_dtype", "suites", "user_model")}


def test_the_headline_gives_the_distinct_share_only_where_the_variant_sent_repeated_rows_once():
    from compiler.measure.docs_tables import _distinct_share

    rows = [{"cache": {"hits": 500.0, "misses": 100.0}, "history_rows": 1000},
            {"cache": {"hits": 750.0, "misses": 50.0}, "history_rows": 1000}]
    assert _distinct_share({"multiplicity": "key_bias", "rows": rows}) == "; the scorer took each distinct row once, 0.70 of the history rows"
    assert _distinct_share({"multiplicity": None, "rows": rows}) == ""
    assert _distinct_share({"multiplicity": "key_bias", "rows": [{"cache": row["cache"]} for row in rows]}) == ""  # recorded before
