"""results.md of a benchmark run: the best row of a cell, the speedups, the stage breakdowns and the markdown tables,
on small hand-made results dicts shaped like benchmarks/results/*/results.json (the plots are not tested here)."""

import pytest

from compiler.core.names import ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, SCORER, SPLIT, TORCH
from compiler.measure.bench_repeated import memory_fields
from compiler.measure.bench_report import (
    NAMES,
    bar_segments,
    best,
    compile_markdown,
    latency_table,
    markdown,
    precision_ratios,
    precision_table,
    repeated_distinct_lines,
    repeated_memory_table,
    repeated_table,
    speedup_table,
    speedups,
    stage_rows,
    stamp,
    throughput_table,
)
from compiler.serving.server import StubProcess

LOAD, OTHER_LOAD = "L=512 N=32", "mixed N=128"


def stage(model: str, queue: float, compute_input: float, infer: float, output: float, requests: int = 100) -> dict:
    return {"model": model, "requests": requests, "queue_ms": queue, "compute_input_ms": compute_input,
            "compute_infer_ms": infer, "compute_output_ms": output}


def row(concurrency: int, throughput: float, p50: float = 1.0, p99: float = 2.0, stages=None, halves=None,
        of_peak: float | None = None) -> dict:
    """One perf_analyzer run, as bench.bench_server records it."""
    r = {"concurrency": concurrency, "window_requests": 12, "throughput": throughput, "p50_ms": p50, "p90_ms": p50,
         "p99_ms": p99, "server_queue_ms": 0.0, "server_compute_ms": 1.0, "fraction_of_peak": of_peak}
    if stages is not None:
        r["stages"] = stages
    if halves is not None:
        r["split_halves_ms"] = halves
    return r


def cell(model: str, rows: list, precision: str = "fp32", load: str = LOAD, dropped: str = "", unstable=(),
         flops: float | None = 2.5e8) -> dict:
    return {"precision": precision, "model": model, "load": load, "history": 512.0, "candidates": 32,
            "flops_per_request": flops, "rows": rows, "dropped": dropped, "unstable": list(unstable)}


def results(cells: list, precisions=("fp32",), models=(ENSEMBLE, FUSED, NAIVE, TORCH), **extra) -> dict:
    return {"name": "unit", "created": "2026-01-01T00:00:00+0000",
            "config": {"precisions": list(precisions), "models": list(models), "concurrency": [1, 2, 4],
                       "cell_budget_s": 150.0, "stability_percentage": 50, "cut_dtype": None, "protocol": "http"},
            "cells": cells, "response_cache": None, "attention_check": [], "repeated_users": None,
            "thread_budgets": {}, "gates": {},
            "machine": {"platform": "Linux", "processor": "x86_64", "cpu_model": "AMD EPYC", "isa": ["avx2"], "cpus": 2},
            "versions": {"torch": "2.13.0+cpu", "onnxruntime": "1.32.0", "tritonserver": "2.51.0 (in nvidia-pytriton 0.7.0)"},
            "gemm_peak_flops": 1.9e11,
            "model_config": {"n_heads": 4, "head_dim": 16, "n_layers": 4, "attention": "kv", "max_history": 10000}, **extra}


def table(lines: list[str], header_start: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with `header_start`, each as its cells."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def lines_of(r: dict) -> list[str]:
    return markdown(r).splitlines()


# Three concurrency levels: stca is best at 2, stca_fused at 4; the point-wise baseline measured once; eager dropped.
STCA_ROWS = [row(1, 100.0, 3.0, 5.0, of_peak=0.05), row(2, 180.0, 4.5, 9.0, of_peak=0.125), row(4, 150.0, 8.0, 20.0)]
FUSED_ROWS = [row(1, 60.0), row(2, 100.0), row(4, 120.0)]
NAIVE_ROWS = [row(1, 20.0)]
TORCH_DROPPED = "one request takes 9.00 s: 3 concurrency levels x 3 windows x 12 requests would take ~16 min on this machine"


def grid() -> dict:
    return results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, FUSED_ROWS), cell(NAIVE, NAIVE_ROWS),
                    cell(TORCH, [], dropped=TORCH_DROPPED)])


def test_best_picks_the_highest_throughput_concurrency():
    assert best(cell(ENSEMBLE, STCA_ROWS)) is STCA_ROWS[1]  # 180 req/s at 2 beats 100 at 1 and 150 at 4
    assert best(cell(FUSED, FUSED_ROWS))["concurrency"] == 4


def test_a_cell_without_rows_has_no_best():
    assert best(cell(TORCH, [], dropped=TORCH_DROPPED)) is None


def test_a_speedup_is_the_ratio_of_the_two_models_best_throughputs_on_the_same_load():
    (s,) = speedups(grid())
    assert (s["precision"], s["load"], s["history"], s["candidates"]) == ("fp32", LOAD, 512.0, 32)
    assert s[FUSED] == pytest.approx(180.0 / 120.0)  # each at its own best concurrency (2 and 4)
    assert s[NAIVE] == pytest.approx(180.0 / 20.0)
    assert s[TORCH] is None  # dropped: no ratio


def test_speedups_never_compare_across_precisions_or_loads():
    r = results([cell(ENSEMBLE, [row(1, 90.0)]), cell(FUSED, [row(1, 30.0)]),
                 cell(ENSEMBLE, [row(1, 40.0)], precision="int8"), cell(FUSED, [row(1, 80.0)], precision="int8"),
                 cell(ENSEMBLE, [row(1, 10.0)], load=OTHER_LOAD)], precisions=("fp32", "int8"))
    found = {(s["precision"], s["load"]): s for s in speedups(r)}
    assert set(found) == {("fp32", LOAD), ("int8", LOAD), ("fp32", OTHER_LOAD)}
    assert found["fp32", LOAD][FUSED] == pytest.approx(3.0)  # 90 / 30
    assert found["int8", LOAD][FUSED] == pytest.approx(0.5)  # 40 / 80: int8's own fused, not fp32's
    assert found["fp32", OTHER_LOAD][FUSED] is None  # no stca_fused on that load


def test_a_load_where_stca_itself_was_dropped_has_no_speedup_row():
    r = results([cell(ENSEMBLE, [], dropped="too slow"), cell(FUSED, FUSED_ROWS)])
    assert speedups(r) == []


def test_the_throughput_table_shows_each_cells_best_row_and_a_dropped_cell_as_dropped():
    rows = table(throughput_table(grid(), "fp32"), "| load | model | req/s |")
    # the stca row: 180 req/s at concurrency 2, its p50/p99 there, 2.5e8 FLOPs = 0.250 GFLOP, 12.5% of peak
    assert rows[0] == [LOAD, ENSEMBLE, "180.0", "2", "4.5", "9.0", "0.250", "12.5%"]
    assert rows[1][:4] == [LOAD, FUSED, "120.0", "4"]
    assert rows[1][-1] == "-"  # no fraction of peak recorded
    assert rows[3] == [LOAD, TORCH, "dropped", "", "", "", "0.250", ""]
    assert len(rows) == 4
    assert table(lines_of(grid()), "| load | model | req/s |") == rows  # results.md holds the same table


def test_a_cell_with_no_stable_level_is_not_called_dropped():
    unstable = [f"concurrency {c}: no stable measurement" for c in (1, 2, 4)]
    r = results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, [], unstable=unstable)])
    assert f"- fp32 {LOAD}: {unstable[0]}" in lines_of(r)  # listed as not measured...
    (_, fused_row) = table(throughput_table(r, "fp32"), "| load | model | req/s |")
    assert fused_row[2] == "not stable"  # ...so not also called dropped


def test_a_cell_without_flops_shows_a_dash_for_its_gflop():
    rows = table(throughput_table(results([cell(ENSEMBLE, [row(1, 5.0)], flops=None)]), "fp32"), "| load | model | req/s |")
    assert rows[0][6] == "-"


def test_the_speedup_table_formats_ratios_and_shows_a_dropped_baseline_as_dropped():
    rows = table(speedup_table(grid()), "| precision | load | over stca_fused |")
    assert rows == [["fp32", LOAD, "1.50x", "9.00x", "dropped"]]  # 180/120, 180/20, stca_torch dropped
    assert table(lines_of(grid()), "| precision | load | over stca_fused |") == rows  # results.md holds the same table


def test_a_baseline_the_run_did_not_measure_is_a_dash_not_dropped():
    # e.g. benchmarks/results/medium-cpu: stca, stca_fused and stca_torch; no stca_naive cell at all
    r = results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, FUSED_ROWS)], models=(ENSEMBLE, FUSED))
    assert table(speedup_table(r), "| precision | load | over stca_fused |") == [["fp32", LOAD, "1.50x", "-", "-"]]


def test_a_run_that_measured_stca_inductor_gains_a_column_over_it_and_its_compile_seconds():
    r = results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, FUSED_ROWS), cell(INDUCTOR, [row(1, 36.0), row(2, 45.0)])],
                models=(ENSEMBLE, FUSED, INDUCTOR), compile={"fp32": {INDUCTOR: {"warmup_s": 41.25, "graphs": 1}}})
    lines = speedup_table(r)
    assert lines[0] == "| precision | load | over stca_fused | over stca_naive | over stca_torch | over stca_inductor |"
    assert table(lines, "| precision | load |") == [["fp32", LOAD, "1.50x", "-", "-", "4.00x"]]  # 180/120; 180/45
    assert table(lines_of(r), "| precision | load | over stca_fused |") == table(lines, "| precision | load |")
    assert table(compile_markdown(r), "| precision | model |") == [["fp32", INDUCTOR, "41.2", "1"]]
    assert "## torch.compile at load" in lines_of(r)
    assert NAMES[INDUCTOR] == "stca_inductor (torch.compile, inductor)"


def test_a_run_recorded_before_stca_inductor_keeps_its_speedup_table_and_has_no_compile_section():
    r = grid()  # no stca_inductor in its models, no "compile" in its results (benchmarks/results/* as recorded)
    assert speedup_table(r)[:2] == ["| precision | load | over stca_fused | over stca_naive | over stca_torch |", "|---|---|---:|---:|---:|"]
    assert compile_markdown(r) == [] and not any("torch.compile" in line for line in lines_of(r))


def test_a_run_that_measured_no_baseline_has_no_speedup_table():
    r = results([cell(ENSEMBLE, STCA_ROWS)], models=(ENSEMBLE,))
    assert speedup_table(r) == []
    assert not any(line.startswith("## Speedup") for line in lines_of(r))


def test_precision_ratios_pair_each_models_best_in_both_precisions_and_leave_out_eager():
    r = results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, FUSED_ROWS), cell(TORCH, [row(1, 8.0)]),
                 cell(ENSEMBLE, [row(1, 270.0), row(2, 360.0)], precision="int8"), cell(FUSED, [row(4, 180.0)], precision="int8"),
                 cell(TORCH, [row(1, 8.5)], precision="int8"),
                 cell(INDUCTOR, [row(1, 9.0)]), cell(INDUCTOR, [row(1, 9.5)], precision="int8"),
                 cell(ENSEMBLE, [row(1, 50.0)], load=OTHER_LOAD), cell(ENSEMBLE, [], load=OTHER_LOAD, precision="int8", dropped="slow")],
                precisions=("fp32", "int8"))
    # stca: fp32 best 180 (conc. 2), int8 best 360; stca_fused: 120 and 180; stca_torch and stca_inductor are fp32 in both
    assert precision_ratios(r) == [{"load": LOAD, "models": {ENSEMBLE: (180.0, 360.0), FUSED: (120.0, 180.0)}}]
    assert table(precision_table(r), "| load |") == [[LOAD, "180.0", "360.0", "2.00x", "1.50x"]]


def test_the_latency_table_shows_each_models_concurrency_one_row_and_where_its_time_went():
    split = stage(SPLIT, 0.1, 0.2, 3.0, 0.3)
    r = results([cell(ENSEMBLE, [row(1, 100.0, 3.0, 5.0, stages=[split], halves={"encoder": 1.0, "scorer": 1.5}), row(2, 180.0)]),
                 cell(FUSED, [row(2, 100.0)]),  # never measured at concurrency 1: no row
                 cell(NAIVE, [row(1, 20.0, 50.0, 60.0)])])
    assert table(latency_table(r, "fp32", LOAD), "| model |") == [
        [f"`{ENSEMBLE}`", "3.0", "5.0", "100.0",
         "split queue 0.1, split input 0.2, encoder (in split) 1.0, scorer (in split) 1.5, split infer, rest 0.5, split output 0.3"],
        [f"`{NAIVE}`", "50.0", "60.0", "20.0", "-"],  # no Triton statistics recorded
    ]
    assert latency_table(r, "fp32", OTHER_LOAD) == []


def test_dropped_cells_are_listed_with_why_and_the_cell_budget():
    lines = lines_of(grid())
    assert "Dropped cells (they cannot finish within the per-cell budget of 150 s on this machine):" in lines
    assert f"- fp32 {TORCH} {LOAD}: {TORCH_DROPPED}" in lines
    assert not any(line.startswith(f"- fp32 {ENSEMBLE} ") for line in lines)  # measured cells are not listed


def test_a_run_without_dropped_or_unstable_cells_lists_none():
    lines = lines_of(results([cell(ENSEMBLE, STCA_ROWS), cell(FUSED, FUSED_ROWS)]))
    assert not any(line.startswith("Dropped cells") or line.startswith("Not measured") for line in lines)


def test_unstable_levels_are_listed_per_cell():
    unstable = "concurrency 4: perf_analyzer found no stable window"
    lines = lines_of(results([cell(ENSEMBLE, STCA_ROWS[:2], unstable=[unstable])]))
    assert any(line.startswith("Not measured: perf_analyzer found no stable measurement") and "50%" in line for line in lines)
    assert f"- fp32 {LOAD}: {unstable}" in lines


def test_a_missed_gate_is_announced_with_its_first_three_failures():
    gates = {"int8": {"passed": False, "failures": ["f1", "f2", "f3", "f4"]}, "fp32": {"passed": True, "failures": []}}
    r = results([cell(ENSEMBLE, STCA_ROWS), cell(ENSEMBLE, STCA_ROWS, precision="int8")], precisions=("fp32", "int8"),
                gates=gates)
    notes = [line for line in lines_of(r) if "missed its accuracy gate" in line]
    assert notes == ["**The int8 build missed its accuracy gate** (f1; f2; f3); its speed is measured all the same."]


def test_stage_rows_index_each_rows_stage_times_by_concurrency_then_model():
    one, two = stage(SPLIT, 0.1, 0.2, 3.0, 0.3), stage(SPLIT, 2.0, 0.2, 3.1, 0.3)
    c = cell(ENSEMBLE, [row(1, 10.0, stages=[one]), row(2, 12.0, stages=[two]), row(4, 11.0)])
    assert stage_rows(c) == {1: {SPLIT: one}, 2: {SPLIT: two}, 4: {}}  # no statistics recorded at 4 (a gRPC run)


def test_bar_segments_divide_stca_splits_infer_into_its_halves_and_the_rest():
    r = row(1, 10.0, stages=[stage(SPLIT, 0.1, 0.2, 3.0, 0.3)], halves={"encoder": 1.0, "scorer": 1.5})
    assert bar_segments(r) == [("split queue", 0.1), ("split input", 0.2), ("encoder (in split)", 1.0),
                               ("scorer (in split)", 1.5), ("split infer, rest", pytest.approx(0.5)), ("split output", 0.3)]


def test_bar_segments_never_give_the_rest_of_an_infer_a_negative_length():
    r = row(1, 10.0, stages=[stage(SPLIT, 0.0, 0.0, 2.0, 0.0)], halves={"encoder": 1.25, "scorer": 1.0})
    assert dict(bar_segments(r))["split infer, rest"] == 0.0  # the halves' timers overran the infer by 0.25 ms


def test_bar_segments_of_two_processes_are_each_models_four_stages_in_order():
    r = row(1, 10.0, stages=[stage(ENCODER, 0.1, 0.2, 1.0, 0.3), stage(SCORER, 0.4, 0.5, 2.0, 0.6)])
    assert bar_segments(r) == [("encoder queue", 0.1), ("encoder input", 0.2), ("encoder infer", 1.0), ("encoder output", 0.3),
                               ("scorer queue", 0.4), ("scorer input", 0.5), ("scorer infer", 2.0), ("scorer output", 0.6)]


def test_a_row_without_statistics_has_no_segments():
    assert bar_segments(row(1, 10.0)) == []


def test_the_breakdown_table_shows_concurrency_one_and_stcas_best_beside_stca_fused():
    split_1, split_2 = stage(SPLIT, 0.1, 0.2, 3.0, 0.3), stage(SPLIT, 2.5, 0.2, 3.2, 0.4)
    fused_1 = stage(FUSED, 0.05, 0.1, 2.5, 0.1)
    r = results([
        cell(ENSEMBLE, [row(1, 100.0, stages=[split_1], halves={"encoder": 1.0, "scorer": 1.5}),
                        row(2, 180.0, stages=[split_2], halves={"encoder": 1.2, "scorer": 1.5}),
                        row(4, 150.0, stages=[split_2])]),
        cell(FUSED, [row(1, 90.0, stages=[fused_1]), row(4, 120.0)]),  # stca_fused not measured at 2
    ])
    rows = table(lines_of(r), "| precision | load | conc. |")
    assert rows == [
        ["fp32", LOAD, "1", "split 0.1 / 0.2 / 3.0 / 0.3 (infer: encoder 1.0 + scorer 1.5)", "0.1 / 2.5", "100.0", "90.0"],
        ["fp32", LOAD, "2", "split 2.5 / 0.2 / 3.2 / 0.4 (infer: encoder 1.2 + scorer 1.5)", "", "180.0", ""],
    ]  # concurrency 4 is neither the first level nor stca's best (180 req/s at 2)


def test_the_breakdown_shows_one_row_where_stca_is_best_at_concurrency_one():
    r = results([cell(ENSEMBLE, [row(1, 50.0, stages=[stage(SPLIT, 0.0, 0.0, 1.0, 0.0)]), row(2, 40.0, stages=[])])])
    rows = table(lines_of(r), "| precision | load | conc. |")
    assert [x[2] for x in rows] == ["1"]


def test_the_tuning_sweep_is_a_table_of_each_candidates_placements_and_throughputs():
    sweep = [{"placements": {SPLIT: {"instances": 1, "threads": 2, "spinning": False},
                             FUSED: {"instances": 2, "threads": 1, "spinning": False}},
              "throughput": {ENSEMBLE: 38.91, FUSED: 43.56}, "at_concurrency": {ENSEMBLE: 1, FUSED: 2}},
             {"placements": {SPLIT: {"instances": 1, "threads": 1, "spinning": False},
                             FUSED: {"instances": 1, "threads": 2, "spinning": True}},
              "throughput": {ENSEMBLE: 54.93, FUSED: 22.56}, "at_concurrency": {ENSEMBLE: 4, FUSED: 4}}]
    budget = {"cpu_threads": 2, "chosen_by": "tune", "placements": {},
              "tuning": {"load": "KuaiRand-1K L", "candidates_per_request": 128, "requests": 16, "concurrency": [1, 2, 4],
                         "choice": {}, "sweep": sweep}}
    lines = lines_of(results([cell(ENSEMBLE, STCA_ROWS)], thread_budgets={"fp32": budget, "int8": None}))
    assert "## CPU thread budget, fp32 repository (2 cores, chosen by tune)" in lines
    assert not any("int8 repository" in line for line in lines)  # no budget recorded for it
    assert table(lines, "| split | fused |") == [["1x2", "2x1", "38.9", "43.6"], ["1x1", "1x2 spin", "54.9", "22.6"]]


def repeated_level(concurrency: int, throughput: float, stages: list, cache: dict | None = None, halves=None) -> dict:
    """One concurrency level of the repeated-users suite, as bench_repeated.repeated_users records it."""
    r = {"concurrency": concurrency, "requests": 96, "throughput": throughput, "p50_ms": 1e3 / throughput, "p99_ms": 2e3 / throughput,
         "stages": stages, "cache": cache or {}}
    if halves is not None:
        r["split_halves_ms"] = halves
    return r


def test_the_repeated_users_table_reads_each_half_from_its_own_model_or_from_inside_stca_split():
    cache = {"hits": 90.0, "misses": 10.0}
    rep = {"variants": {
        "row cache, one process": {"model": ENSEMBLE, "rows": [
            repeated_level(1, 10.0, [stage(ENSEMBLE, 0.1, 0.0, 0.0, 0.0), stage(SPLIT, 0.2, 0.1, 95.0, 0.1)], cache,
                           halves={"encoder": 30.0, "scorer": 60.0}),
            repeated_level(2, 15.0, [stage(SPLIT, 0.2, 0.1, 120.0, 0.1)], cache, halves={"encoder": 40.0, "scorer": 75.0})]},
        "row cache": {"model": ENSEMBLE, "rows": [
            repeated_level(1, 8.0, [stage(ENCODER, 0.1, 0.1, 31.3, 0.1), stage(SCORER, 0.1, 0.1, 75.8, 0.1)], cache),
            repeated_level(2, 12.0, [stage(ENCODER, 0.1, 0.1, 40.0, 0.1), stage(SCORER, 0.1, 0.1, 90.0, 0.1)], cache)]},
        "fused": {"model": FUSED, "rows": [repeated_level(1, 5.0, [stage(FUSED, 0.1, 0.1, 156.3, 0.1)]),
                                           repeated_level(2, 4.0, [stage(FUSED, 0.1, 0.1, 250.0, 0.1)])]},
    }}
    header, rule, one_process, two_processes, fused = repeated_table(rep)
    # best over stca_fused's best (5.0), hit rate per level, and concurrency one's infer ms per half
    assert one_process == "| row cache, one process (`stca`) | 10.0 / 15.0 | 15.0 | 3.00x | 100 | 0.90 / 0.90 | 30.0 | 60.0 |"
    assert two_processes == "| row cache (`stca`) | 8.0 / 12.0 | 12.0 | 2.40x | 125 | 0.90 / 0.90 | 31.3 | 75.8 |"
    assert fused == "| fused (`stca_fused`) | 5.0 / 4.0 | 5.0 | 1.00x | 200 | - | - | 156.3 |"


def test_the_distinct_share_is_keys_looked_up_over_history_rows_and_names_who_sent_them_once():
    def level(concurrency, hits, misses, history_rows):
        return {**repeated_level(concurrency, 10.0, [], {"hits": hits, "misses": misses}), "history_rows": history_rows}

    rep = {"variants": {
        "row cache, one process": {"model": ENSEMBLE, "multiplicity": "key_bias", "rows": [level(1, 500, 100, 1000), level(2, 650, 50, 1000)]},
        "row cache": {"model": ENSEMBLE, "multiplicity": None, "rows": [level(1, 500, 100, 1000), level(2, 650, 50, 1000)]},
        "fused": {"model": FUSED, "multiplicity": "key_bias", "rows": [repeated_level(1, 5.0, [])]},  # served from a cached repository
    }}
    line, blank = repeated_distinct_lines(rep)
    assert line.startswith("Distinct row keys per history row, per level: 0.60 / 0.70 (")
    assert line.endswith("in: `row cache, one process`.") and blank == ""
    rep["variants"]["row cache, one process"]["multiplicity"] = None
    assert repeated_distinct_lines(rep)[0].endswith("Every variant sent the scorer every row.")
    for v in rep["variants"].values():  # recorded before the suite kept its history rows: no line
        for row in v["rows"]:
            row.pop("history_rows", None)
    assert repeated_distinct_lines(rep) == []


def test_the_memory_table_counts_a_shared_cache_once_and_each_process_by_what_is_its_own():
    MiB = 2**20
    # two stca_split instances mapping one populated 1,024 MiB region; an encoder without a cache
    one_process = [StubProcess(11, SPLIT, f"{SPLIT}_0_{i}", "S", (190 + i + 1024) * MiB, 1024 * MiB) for i in range(2)]
    encoder = [StubProcess(12, ENCODER, f"{ENCODER}_0_0", "S", 150 * MiB, 0)]
    cache = {"bytes": 600 * MiB, "entries": 1000, "evictions": 0}
    rep = {"variants": {"row cache, one process": {"model": ENSEMBLE, "cache_holder": SPLIT, "cache": cache,
                                                   **memory_fields("before", one_process), **memory_fields("after", one_process)},
                        "no cache": {"model": ENSEMBLE, "cache": None,
                                     **memory_fields("before", encoder), **memory_fields("after", encoder)}}}
    header, _, split, uncached = repeated_memory_table(rep)
    assert "shared by them" in header
    assert split == f"| row cache, one process | `{SPLIT}` | 190, 191 | 190, 191 | 1024 / 1024 | 600 | 1,000 | 0 |"
    assert uncached == f"| no cache | `{ENCODER}` | 150 | 150 | 0 / 0 | - | - | - |"
    for v in rep["variants"].values():  # recorded before the shared memory was read apart: whole resident sets
        del v["shared_before"], v["shared_after"]
    header, _, split, _ = repeated_memory_table(rep)
    assert "shared" not in header and split == f"| row cache, one process | `{SPLIT}` | 190, 191 | 190, 191 | 600 | 1,000 | 0 |"


def test_the_stamp_names_the_peak_measured_before_and_after_the_cells():
    r = results([], gemm_peaks={"onnxruntime": 1.49e11, "torch": 1.45e11},
                gemm_peaks_after={"onnxruntime": 1.9e11, "torch": 1.82e11})
    line = stamp(r)
    assert "peak 190 GFLOP/s fp32" in line  # gemm_peak_flops, the larger of the two
    assert "best of onnxruntime 149, torch 145 before the cells, onnxruntime 190, torch 182 after" in line
    del r["gemm_peaks_after"]  # a run recorded before the second measurement says only the first
    assert "best of onnxruntime 149, torch 145)" in stamp(r)
