"""results.md and the plots of a benchmark run, each stamped with the machine, versions, model and shapes; the
tables and the command line that compiler.measure.docs_tables also puts in the docs."""

import shlex
from pathlib import Path

from compiler.core.names import BASELINES, ENCODER, ENSEMBLE, FUSED, INDUCTOR, NAIVE, PYTORCH, SCORER, SHORT_NAMES, TORCH
from compiler.measure.bench_repeated import distinct_share, hit_rate
from compiler.measure.perf import load_label
from compiler.repository.budget import Placement
from compiler.stca.costmodel import peaks_text

NAMES = {ENSEMBLE: "stca (split ensemble)", FUSED: "stca_fused (unsplit)", NAIVE: "stca_naive (point-wise)", TORCH: "stca_torch (PyTorch eager)",
         INDUCTOR: "stca_inductor (torch.compile, inductor)"}
# The speedup table's columns from before stca_inductor: every run's table has them ("-" where the run did not measure
# one), so the recorded runs' results.md stay as they were written; a baseline added since has a column where measured.
SPEEDUP_COLUMNS = (FUSED, NAIVE, TORCH)
SUITE_RESULTS = (("grid", "cells"), ("response_cache", "response_cache"), ("attention", "attention_check"),
                 ("repeated_users", "repeated_users"))  # each suite of compiler.measure.bench and the results key it fills


def write(out: Path, results: dict) -> None:
    """results.md, and the plots of the suites the run measured (compiler.measure.bench.SUITES). A plot with nothing
    to draw is not written, and a stale file of that name is removed."""
    (out / "results.md").write_text(markdown(results))
    text = stamp(results)
    for name, (data, draw) in PLOTS.items():
        found = data(results)
        if found:
            draw(out / name, results, text, found)
        else:
            (out / name).unlink(missing_ok=True)


def markdown(results: dict) -> str:
    """results.md's text."""
    return "\n".join(_markdown(results, stamp(results))) + "\n"


def plot_files(results: dict) -> list[str]:
    """The plots write() draws for these results (those with something to draw), without drawing them."""
    return [name for name, (data, _) in PLOTS.items() if data(results)]


def best(cell: dict) -> dict | None:
    return max(cell["rows"], key=lambda r: r["throughput"]) if cell["rows"] else None


def speedups(results: dict) -> list[dict]:
    """stca's best throughput over each baseline's, per precision and load (where both were measured)."""
    by_key = {(c["precision"], c["load"], c["model"]): c for c in results["cells"]}
    rows = []
    for (precision, load, model), cell in by_key.items():
        if model != ENSEMBLE or not cell["rows"]:
            continue
        row = {"precision": precision, "load": load, "history": cell["history"], "candidates": cell["candidates"]}
        for baseline in BASELINES:
            other = by_key.get((precision, load, baseline))
            row[baseline] = best(cell)["throughput"] / best(other)["throughput"] if other and other["rows"] else None
        rows.append(row)
    return rows


def measured_baselines(results: dict) -> list[str]:
    """The baselines the run was asked to measure (config.models), in BASELINES' order."""
    return [b for b in BASELINES if b in results["config"].get("models", ())]


def precision_ratios(results: dict, base: str = "fp32", other: str = "int8") -> list[dict]:
    """Per load, each model's best throughput in `other` against `base` precision, where the model was measured in
    both: [{"load": load, "models": {model: (base req/s, other req/s)}}], in the order of the cells. stca_torch and
    stca_inductor are left out: they are the PyTorch model in fp32 in every precision's repository."""
    by_key = {(c["precision"], c["load"], c["model"]): c for c in results["cells"]}
    rows: dict[str, dict] = {}
    for (precision, load, model), cell in by_key.items():
        mine = by_key.get((other, load, model))
        if precision != base or model in PYTORCH or not cell["rows"] or not mine or not mine["rows"]:
            continue
        rows.setdefault(load, {"load": load, "models": {}})["models"][model] = (best(cell)["throughput"], best(mine)["throughput"])
    return list(rows.values())


def run_suites(results: dict) -> list[str]:
    """The suites the run measured: config.suites, or for a run recorded before bench had suites, those whose
    results it holds."""
    recorded = results["config"].get("suites")
    return list(recorded) if recorded is not None else [suite for suite, key in SUITE_RESULTS if results.get(key)]


def reproduce_command(results: dict) -> str:
    """The `bench` command line that records this run again, from results.json's "config": every option the run was
    given, written out, so that it does not depend on today's defaults; the grid's options only where the run measured
    the grid, the repeated-users traffic only where it measured that suite; options the run left unset (no --preset,
    no --cut-dtype, ...) left out. Config fields without an option (the response-cache load, the verify cases) are
    their defaults in every recorded run: tests/measure/test_docs_tables.py parses each recorded run's command with
    the real command line and compares the BenchConfig it makes with the recorded one."""
    c, suites = results["config"], run_suites(results)
    words = [".venv/bin/python", "-m", "compiler", "bench", "--name", results["name"]]
    joined = lambda values: ",".join(str(v) for v in values)  # noqa: E731
    user = c.get("user_model")
    if user:
        words += ["--onnx", user["onnx"]] if user.get("onnx") else ["--exported", user["exported"]]
        words += ["--request-inputs", joined(user["request_inputs"])]
        words += ["--candidate-axis", str(user["candidate_axis"])] if user.get("candidate_axis") is not None else []
        words += ["--samples", user["samples"]] if user.get("samples") else []
        for name, (lo, hi) in (user.get("input_ranges") or {}).items():
            words += ["--input-range", f"{name}={lo:g}:{hi:g}"]
    for flag, key in (("--checkpoint", "checkpoint"), ("--preset", "preset"), ("--max-history", "max_history"), ("--cut-dtype", "cut_dtype")):
        words += [flag, str(c[key])] if c.get(key) is not None else []
    words += ["--no-tune"] if c.get("tune") is False else []
    words += ["--precisions", joined(c["precisions"])]
    if "grid" in suites:
        for flag, key in (("--models", "models"), ("--histories", "histories"), ("--candidates", "candidates")):
            words += [flag, joined(c[key])] if key in c else []
    words += ["--concurrency", joined(c["concurrency"])] if "concurrency" in c else []
    words += ["--window-requests", str(c["window_requests"])] if "window_requests" in c else []
    words += ["--cell-budget", f"{c['cell_budget_s']:g}"] if "grid" in suites and "cell_budget_s" in c else []
    words += ["--protocol", c["protocol"]] if c.get("protocol", "http") != "http" else []
    words += ["--suites", joined(suites)]
    if "repeated_users" in suites and c.get("repeated"):
        words += ["--repeated-users", str(c["repeated"]["traffic"]["users"]), "--repeated-visits", str(c["repeated"]["traffic"]["visits"])]
    words += ["--out", str(c["out"])] if c.get("out") not in (None, "benchmarks/results") else []
    return " ".join(shlex.quote(str(w)) for w in words)


def machine_text(r: dict) -> str:
    """The CPU as results.json's "machine" records it: model, architecture, ISA flags, and how many CPUs the run had."""
    m = r["machine"]
    return (f"{m.get('cpu_model', m['processor'])} ({m['processor']}; {' '.join(m.get('isa', [])) or 'ISA flags not recorded'}) "
            f"x{m['cpus']} CPUs")


def model_text(r: dict) -> str:
    c = r.get("model_config")
    return (f"model D={c['n_heads'] * c['head_dim']} h={c['n_heads']} M={c['n_layers']} attention={c['attention']}, L<={c['max_history']}"
            if c else f"model {r['model']['kind']} {Path(r['model']['path']).name}, "
            + ", ".join(f"{dim}<={size}" for dim, size in r["contract"]["limits"].items()))


def stamp(r: dict) -> str:
    """The machine, its measured peak, the versions, the model and the protocol of a run: one line, under every plot."""
    v = r["versions"]
    by_library = peaks_text(r.get("gemm_peaks", {}))
    if r.get("gemm_peaks_after"):  # measured again after the cells: the machine's speed drifts
        by_library = f"{by_library} before the cells, {peaks_text(r['gemm_peaks_after'])} after"
    return (f"{machine_text(r)}, peak {r['gemm_peak_flops'] / 1e9:.0f} GFLOP/s fp32"
            + (f" (2048³ matmul, best of {by_library})" if by_library else "") + "; "
            f"tritonserver {v.get('tritonserver', '?').split(' ')[0]}, onnxruntime {v['onnxruntime']}, torch {v['torch']}; "
            f"{model_text(r)}; {r['config']['protocol']}")


def _gflops(cell: dict) -> str:
    return "-" if cell["flops_per_request"] is None else f"{cell['flops_per_request'] / 1e9:.3f}"


def _of_peak(row: dict) -> str:
    return "-" if row.get("fraction_of_peak") is None else f"{100 * row['fraction_of_peak']:.1f}%"


def _markdown(r: dict, stamp: str) -> list[str]:
    drawn = plot_files(r)
    lines = [f"# Benchmark `{r['name']}`", "", f"Recorded {r['created']}. {stamp}.", "",
             f"Reproduce: `{reproduce_command(r)}` (see docs/benchmarks.md)."
             + (" Throughput is requests/s (each request scores all N candidates); latencies are perf_analyzer's client-side "
                "percentiles; \"% of peak\" is achieved FLOP/s (throughput x FLOPs per request, compiler/stca/costmodel.py) "
                "over the peak above." if r["cells"] else ""), ""]
    for precision in r["config"]["precisions"] if r["cells"] else []:
        gate = r.get("gates", {}).get(precision)
        if gate and not gate["passed"]:
            lines += [f"**The {precision} build missed its accuracy gate** ({'; '.join(gate['failures'][:3])}); its speed is "
                      "measured all the same.", ""]
        lines += [f"## {precision}: best throughput over concurrency {r['config']['concurrency']}", "", *throughput_table(r, precision), ""]
    lines += _breakdown_markdown(r) if r["cells"] else []
    lines += _budget_markdown(r)
    cut = r["config"].get("cut_dtype")
    built = r["config"]["precisions"][0] + (f", the cut in {cut}" if cut else "")
    lines += _repeated_markdown(r["repeated_users"], built, drawn) if r.get("repeated_users") else []
    table = speedup_table(r)
    lines += [] if not table else ["## Speedup of `stca` (split) over each baseline", "",
                                   "Ratio of best throughputs on the same server and inputs (- : a baseline this run did not measure).",
                                   "", *table]
    lines += compile_markdown(r)
    ratios = precision_table(r)
    lines += [] if not ratios else ["", "## int8 against fp32", "",
                                    "Best throughput over concurrency of each model built in both precisions, on the same loads.", "",
                                    *ratios, *(["", "![int8 against fp32](int8_vs_fp32.png)"] if "int8_vs_fp32.png" in drawn else [])]
    dropped = [c for c in r["cells"] if c["dropped"]]
    if dropped:
        lines += ["", "Dropped cells (they cannot finish within the per-cell budget of "
                  f"{r['config']['cell_budget_s']:.0f} s on this machine):", ""]
        lines += [f"- {c['precision']} {c['model']} {c['load']}: {c['dropped']}" for c in dropped]
    unstable = [(c, u) for c in r["cells"] for u in c["unstable"]]
    if unstable:
        lines += ["", "Not measured: perf_analyzer found no stable measurement (its windows kept differing by more than "
                  f"{r['config']['stability_percentage']}%, even over windows of 4x the requests):", ""]
        lines += [f"- {c['precision']} {c['load']}: {u}" for c, u in unstable]
    rc = r.get("response_cache") or {}
    lines += [] if not rc else ["", "## Response cache on the history encoder", "",
              f"{rc['users']} users, each sending {rc['requests_per_user']} requests with one history (L={rc['history']}) and fresh "
              f"candidates (N={rc['candidates']}), concurrency 1, `stca` {r['config']['precisions'][0]}:", "",
              *response_cache_table(rc), "",
              f"Hit rate on one cold pass over the {rc['users'] * rc['requests_per_user']} requests: {rc['hit_rate']:.3f} ({rc['hits']:.0f} hits, "
              f"{rc['misses']:.0f} misses, from Triton's metrics; {rc['expected_hit_rate']:.3f} expected: every request but each user's first). "
              f"Throughput is measured with the cache warm (perf_analyzer cycles through the requests): {rc['speedup']:.2f}x."]
    if r.get("attention_check"):
        lines += ["", "## Attention form: cost model against measurement", "",
                  f"Both forms of the same weights, split graphs in ONNX Runtime in one process, L={r['attention_check'][0]['history']}, "
                  "median of 7.", "", *attention_table(r["attention_check"])]
    images = [("throughput", "throughput_vs_concurrency.png"), ("latency", "latency_vs_history.png"), ("speedup", "speedup.png"),
              ("breakdown", "breakdown.png")]
    for alt, name in (x for x in images if x[1] in drawn):
        lines += ["", f"![{alt}]({name})"]
    return lines


def unmeasured(cell: dict) -> str:
    """Why a cell has no number: dropped before measuring (over the time budget), or measured without a stable level."""
    return "dropped" if cell["dropped"] else "not stable"


def throughput_table(r: dict, precision: str) -> list[str]:
    """Each cell of one precision at its best concurrency: req/s, p50/p99, FLOPs per request and the fraction of peak."""
    lines = ["| load | model | req/s | at conc. | p50 ms | p99 ms | GFLOP/request | % of peak |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for cell in (c for c in r["cells"] if c["precision"] == precision):
        b = best(cell)
        if b is None:
            lines.append(f"| {cell['load']} | {cell['model']} | {unmeasured(cell)} | | | | {_gflops(cell)} | |")
            continue
        lines.append(f"| {cell['load']} | {cell['model']} | {b['throughput']:.1f} | {b['concurrency']} | {b['p50_ms']:.1f} | "
                     f"{b['p99_ms']:.1f} | {_gflops(cell)} | {_of_peak(b)} |")
    return lines


def speedup_table(r: dict) -> list[str]:
    """stca over each baseline per precision and load (speedups()): a column per SPEEDUP_COLUMNS and per other baseline
    the run measured; empty where the run measured no baseline."""
    measured = measured_baselines(r)
    if not measured or not r["cells"]:
        return []
    columns = [b for b in BASELINES if b in SPEEDUP_COLUMNS or b in measured]
    fmt = lambda s, b: "-" if b not in measured else "dropped" if s[b] is None else f"{s[b]:.2f}x"  # noqa: E731
    return ["| precision | load | " + " | ".join(f"over {b}" for b in columns) + " |", "|---|---|" + "---:|" * len(columns),
            *(f"| {s['precision']} | {s['load']} | " + " | ".join(fmt(s, b) for b in columns) + " |" for s in speedups(r))]


def compile_markdown(r: dict) -> list[str]:
    """What torch.compile cost at load (results.json's "compile", compiler.measure.bench.torch_compile), apart from the
    throughput above; nothing for a run without it."""
    compiled = r.get("compile") or {}
    rows = [f"| {precision} | {model} | {c['warmup_s']:.1f} | {c['graphs']} |"
            for precision, models in compiled.items() for model, c in models.items()]
    return [] if not rows else [
        "", "## torch.compile at load", "",
        "Seconds the warm-up took while the server started (compiling included; in no request's time), and the graphs "
        "compiled by the end of the grid (2 at warm-up, one each side of L = 4,096; more: a load's shape compiled one). "
        "The inductor cache may have held the graphs from an earlier start (compiler/runtime/inductor.py).", "",
        "| precision | model | warm-up s | graphs |", "|---|---|---:|---:|", *rows]


def grid_table(r: dict) -> list[str]:
    """The grid in one table: per precision and load, each measured model's best req/s, stca over each measured
    baseline, and stca's fraction of peak; only the models the run measured get columns. Empty without a grid."""
    models = [m for m in (ENSEMBLE, *BASELINES) if m in r["config"].get("models", ())]
    ratios = {(s["precision"], s["load"]): s for s in speedups(r)}
    if not ratios:
        return []
    by_key = {(c["precision"], c["load"], c["model"]): c for c in r["cells"]}
    peak = any(c["flops_per_request"] for c in r["cells"])
    lines = ["| precision | load | " + " | ".join(f"`{m}` req/s" for m in models) + " | "
             + " | ".join(f"over `{b}`" for b in models[1:]) + (" | `stca` % of peak" if peak else "") + " |",
             "|---|---|" + "---:|" * (2 * len(models) - 1 + peak)]
    for (precision, load), s in ratios.items():
        req = []
        for m in models:
            b = best(by_key[precision, load, m]) if (precision, load, m) in by_key else None
            req.append(f"{b['throughput']:.1f}" if b else unmeasured(by_key[precision, load, m]) if (precision, load, m) in by_key else "-")
        over = ["dropped" if s[b] is None else f"{s[b]:.2f}x" for b in models[1:]]
        mine = best(by_key[precision, load, ENSEMBLE])
        lines.append(f"| {precision} | {load} | " + " | ".join(req + over) + (f" | {_of_peak(mine)}" if peak else "") + " |")
    return lines


def precision_table(r: dict, base: str = "fp32", other: str = "int8") -> list[str]:
    """precision_ratios() as a table: stca's best throughput in both precisions, and each model's ratio; empty where no
    model was measured in both."""
    rows = precision_ratios(r, base, other)
    if not rows:
        return []
    models = [m for m in r["config"]["models"] if any(m in row["models"] for row in rows)]
    ratio = lambda pair: "-" if pair is None else f"{pair[1] / pair[0]:.2f}x"  # noqa: E731
    lines = [f"| load | {base} `{ENSEMBLE}` req/s | {other} `{ENSEMBLE}` req/s | " + " | ".join(f"{other} / {base} `{m}`" for m in models) + " |",
             "|---|---:|---:|" + "---:|" * len(models)]
    for row in rows:
        mine = row["models"].get(ENSEMBLE)
        lines.append(f"| {row['load']} | " + (f"{mine[0]:.1f} | {mine[1]:.1f}" if mine else "- | -") + " | "
                     + " | ".join(ratio(row["models"].get(m)) for m in models) + " |")
    return lines


def response_cache_table(rc: dict) -> list[str]:
    return ["| | req/s | p50 ms |", "|---|---:|---:|",
            f"| cache on | {rc['throughput_cached']:.1f} | {rc['p50_ms_cached']:.1f} |",
            f"| cache off | {rc['throughput_uncached']:.1f} | {rc['p50_ms_uncached']:.1f} |"]


def attention_table(rows: list[dict]) -> list[str]:
    lines = ["| N | kv ms | reordered ms | kv GFLOP | reordered GFLOP | cost model picks | faster measured |", "|---:|---:|---:|---:|---:|---|---|"]
    for a in rows:
        lines.append(f"| {a['candidates']} | {a['kv_ms']:.2f} | {a['reordered_ms']:.2f} | {a['kv_flops'] / 1e9:.3f} | "
                     f"{a['reordered_flops'] / 1e9:.3f} | {a['predicted']} | {a['measured']}{'' if a['agree'] else ' (disagrees)'} |")
    return lines


def latency_table(r: dict, precision: str, load: str) -> list[str]:
    """One request at a time (concurrency 1) on one load: each model's p50, p99 and req/s, and where its time went
    (Triton's per-model statistics, bar_segments); empty where no model was measured at concurrency 1 on it."""
    lines = ["| model | p50 ms | p99 ms | req/s | where the time goes (ms per request) |", "|---|---:|---:|---:|---|"]
    for cell in (c for c in r["cells"] if c["precision"] == precision and c["load"] == load):
        row = next((x for x in cell["rows"] if x["concurrency"] == 1), None)
        if row is not None:
            parts = ", ".join(f"{name} {ms:.1f}" for name, ms in bar_segments(row) if ms >= 0.05) or "-"
            lines.append(f"| `{cell['model']}` | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['throughput']:.1f} | {parts} |")
    return lines if len(lines) > 2 else []


def _served_how(variants: dict) -> str:
    """How the suite served its variants: side by side, each level in turn (its rows record when they started), or, in
    runs recorded before that, one after another."""
    if all("started_s" in row for v in variants.values() for row in v["rows"]):
        return ("Each variant on a server of its own (an empty cache), all up together, each level served by the variants "
                "in turn (a host's drift slows them alike)")
    return "Each variant on a fresh server (an empty cache), one after another"


def _repeated_markdown(rep: dict, precision: str, drawn: list[str] = ()) -> list[str]:
    """The repeated-users suite (compiler.measure.bench_repeated): the ways to serve the same traffic, where the encoder's
    time goes, and the memory of the process holding the cache."""
    t, variants = rep["traffic"], rep["variants"]
    lines = ["## Repeated users: the history row cache", "",
             f"Per concurrency level, {t['users']} fresh users x {t['visits']} visits (visit-major), each request sent once in order; "
             f"before the levels, a warm-up pass of {rep['warmup_users']} other users. Each user's first history has a KuaiRand-1K "
             f"length; each later visit adds 1 + Poisson({t['new_items_mean'] - 1:g}) interactions and ages every item by an "
             f"Exponential({t['visit_gap_mean_s'] / 3600:g} h) gap; items from a Zipf({t['zipf_exponent']}) popularity over "
             f"{t['catalog']:,} items (compiler.stca.data.RepeatedUsers). Mean L = {rep['mean_history']:.0f}, N = {rep['candidates']}, "
             f"{precision}. {_served_how(variants)}; throughput = requests / wall time.", "",
             *repeated_table(rep), "",
             "Hit rate: distinct row keys found in the cache over distinct keys looked up, per level (Triton's "
             "`stca_history_cache_*` metrics). Infer ms: Triton's compute_infer per request at concurrency 1 (for stca_fused, "
             "the whole graph in the scorer column; for stca_split, the time in each half within its compute, "
             "`stca_split_half_ms`).", ""]
    lines += repeated_distinct_lines(rep)
    lines += ["![the variants side by side](repeated_users.png)", ""] if "repeated_users.png" in drawn else []
    cached = variants["row cache"]
    fit = _encoder_fit(cached["per_request"])
    if fit is not None:
        lines += [f"Encoder time per request against the rows it computed (concurrency 1, {len(cached['per_request'])} requests "
                  f"of {cached['per_request'] and min(p['history'] for p in cached['per_request'])}.."
                  f"{max(p['history'] for p in cached['per_request'])} items): least squares ms = {fit[0]:.2f} "
                  f"+ {1e3 * fit[1]:.3f} per 1,000 computed rows + {1e3 * fit[2]:.3f} per 1,000 history items "
                  "(the key graph, the lookup and the assembly). Without the cache every item is computed: "
                  + ", ".join(f"L={p['history']}: {p['encoder_ms']:.1f} ms" for p in sorted(variants['no cache']['per_request'],
                                                                                        key=lambda p: p['history'])[::3]) + ".", ""]
        lines += ["![encoder time against computed rows](encoder_vs_computed_rows.png)", ""] if "encoder_vs_computed_rows.png" in drawn else []
    lines += ["Resident memory of the processes holding the cache (the history encoder's without one; one per instance), MiB:", "",
              *repeated_memory_table(rep)]
    return lines + [""]


def repeated_distinct_lines(rep: dict) -> list[str]:
    """How many of the history rows were distinct keys, per level, and which variants sent the scorer those only (runs
    recorded before the suite kept the history rows it sent have no such line)."""
    served = {name: v for name, v in rep["variants"].items() if v["model"] == ENSEMBLE}  # stca_fused never reads the cache
    cached = next((v for v in served.values() if v["rows"][0].get("cache") and "history_rows" in v["rows"][0]), None)
    if cached is None:
        return []
    once = [f"`{name}`" for name, v in served.items() if v.get("multiplicity")]
    share = " / ".join(f"{distinct_share([row]):.2f}" for row in cached["rows"])
    return [f"Distinct row keys per history row, per level: {share} (a history holds an item again, with the same action "
            "and age bucket). " + (f"Each distinct key's rows reached the scorer once, the key bias raised by log(count) "
                                   f"(compiler.passes.history_multiset), in: {', '.join(once)}." if once else
                                   "Every variant sent the scorer every row."), ""]


def repeated_table(rep: dict) -> list[str]:
    """The repeated-users variants: req/s per concurrency level, the best over stca_fused's best, p50, the row cache's hit
    rate per level and each half's infer time."""
    variants = rep["variants"]
    fused_best = max(row["throughput"] for row in variants["fused"]["rows"])
    levels = [row["concurrency"] for row in variants["fused"]["rows"]]
    lines = [f"| variant | req/s at conc. {' / '.join(map(str, levels))} | best | over stca_fused | p50 ms (conc. 1) | "
             "hit rate per level | encoder infer ms | scorer infer ms |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, v in variants.items():
        rows = v["rows"]
        top = max(r["throughput"] for r in rows)
        stages = {s["model"]: s for s in rows[0]["stages"]}
        hits = " / ".join(f"{hit_rate(row['cache']):.2f}" for row in rows if row.get("cache") and v["model"] == ENSEMBLE) or "-"
        halves = rows[0].get("split_halves_ms", {})  # stca_split: the halves inside its one compute
        enc = stages.get(ENCODER, {}).get("compute_infer_ms", halves.get("encoder"))
        sco = stages.get(SCORER, stages.get(FUSED, {})).get("compute_infer_ms", halves.get("scorer"))
        per_level = " / ".join(f"{row['throughput']:.1f}" for row in rows)
        lines.append(f"| {name} (`{v['model']}`) | {per_level} | {top:.1f} | "
                     f"{top / fused_best:.2f}x | {rows[0]['p50_ms']:.0f} | {hits} | "
                     + (f"{enc:.1f}" if enc is not None else "-") + " | " + (f"{sco:.1f}" if sco is not None else "-") + " |")
    return lines


def repeated_memory_table(rep: dict) -> list[str]:
    """Memory of each variant's processes holding the cache, before and after the traffic, and the cache's gauges, in
    MiB: each process's own (resident less shared) and the shared memory they map, counted once. A run recorded before
    the shared memory was read apart (no shared_before) has each process's whole resident set and no shared column."""
    variants = rep["variants"]
    apart = any("shared_before" in v for v in variants.values())
    lines = ["| variant | process | " + ("own, before the traffic | own, after | shared by them, before / after"
                                       if apart else "before the traffic | after")
             + " | the cache's bytes gauge | rows held | rows evicted |",
             "|---|---|---|---|" + ("---|" if apart else "") + "---:|---:|---:|"]
    for name in (n for n in ("row cache, one process", "row cache", "row cache in the scorer", "no cache") if n in variants):
        v = variants[name]
        mib = lambda xs: ", ".join(f"{x / 2**20:.0f}" for x in xs) or "-"  # noqa: E731
        shared = f" {v['shared_before'] / 2**20:.0f} / {v['shared_after'] / 2**20:.0f} |" if apart else ""
        held = v["cache"]
        lines.append(f"| {name} | `{v.get('cache_holder', ENCODER)}` | {mib(v['memory_before'])} | {mib(v['memory_after'])} |{shared} "
                     + (f"{held['bytes'] / 2**20:.0f} | {held['entries']:,.0f} | {held['evictions']:,.0f}" if held else "- | - | -") + " |")
    return lines


def _encoder_fit(points: list[dict]):
    """Least squares encoder_ms = a + b * computed_rows + c * history over the per-request points; None if too few."""
    import numpy as np

    if len(points) < 4:
        return None
    X = np.array([[1.0, p["computed_rows"], p["history"]] for p in points])
    return np.linalg.lstsq(X, np.array([p["encoder_ms"] for p in points]), rcond=None)[0]


def _encoder_rows_data(r: dict):
    variants = (r.get("repeated_users") or {}).get("variants", {})
    points = {name: variants[name]["per_request"] for name in ("row cache", "no cache") if variants.get(name, {}).get("per_request")}
    return points


def _plot_encoder_rows(path: Path, r: dict, stamp: str, points: dict) -> None:
    plt, fig, axes = _figure(1, "History encoder time per request against the rows it computed", stamp)
    ax = axes[0]
    for name, marker in (("row cache", "o"), ("no cache", "x")):
        ax.scatter([p["computed_rows"] for p in points.get(name, [])], [p["encoder_ms"] for p in points.get(name, [])], marker=marker,
                   label=f"{name}: computed rows" + (" = L" if name == "no cache" else " = cache misses"))
    ax.set(xlabel="rows computed by the encoder", ylabel="encoder compute_infer (ms)")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(plt, fig, path)


def _repeated_data(r: dict):
    return (r.get("repeated_users") or {}).get("variants")


def _plot_repeated(path: Path, r: dict, stamp: str, variants: dict) -> None:
    """The repeated-users variants side by side: req/s per concurrency level, and the row cache's hit rate per level."""
    plt, fig, (ax_t, ax_h) = _figure(2, "Repeated users: the same traffic served each way (each variant on a fresh server)", stamp)
    levels = sorted({row["concurrency"] for v in variants.values() for row in v["rows"]})
    cached = [n for n, v in variants.items() if v["model"] == ENSEMBLE and any(row.get("cache") for row in v["rows"])]
    for ax, names, value in ((ax_t, list(variants), lambda row: row["throughput"]),
                             (ax_h, cached, lambda row: hit_rate(row["cache"]) if row.get("cache") else None)):
        width = 0.8 / len(levels)
        for k, level in enumerate(levels):
            bars = [(i, value(row)) for i, name in enumerate(names)
                    for row in variants[name]["rows"] if row["concurrency"] == level and value(row) is not None]
            ax.bar([i + (k - (len(levels) - 1) / 2) * width for i, _ in bars], [y for _, y in bars], width, label=f"concurrency {level}")
        ax.set_xticks(range(len(names)), [f"{n} ({variants[n]['model']})" for n in names], rotation=30, ha="right", fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        _legend(ax, loc="upper right", ncol=len(levels))
    top = max(row["throughput"] for v in variants.values() for row in v["rows"])
    ax_t.set(title="throughput (requests / wall time)", ylabel="requests / s", ylim=(0, 1.3 * top))  # room for the legend
    ax_h.set(title="row cache hit rate (distinct keys found / looked up)", ylabel="hit rate", ylim=(0, 1.25), yticks=[0, 0.25, 0.5, 0.75, 1])
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


STAGES = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")
STAGE_NAMES = {"queue_ms": "queue", "compute_input_ms": "input", "compute_infer_ms": "infer", "compute_output_ms": "output"}


def stage_rows(cell: dict) -> dict[int, dict]:
    """concurrency -> {composing model: {stage: ms per request}}, from the row's Triton statistics."""
    return {row["concurrency"]: {t["model"]: t for t in row.get("stages", [])} for row in cell["rows"]}


def _breakdown_markdown(r: dict) -> list[str]:
    """Per load: each stage of each composing model of stca (and, for stca_split, each half inside its infer), and
    stca_fused's, at concurrency 1 (what one request costs) and at stca's best concurrency (where the queue shows
    which model is the bottleneck)."""
    lines = ["## Where the time goes: Triton's per-model statistics", "",
             "Mean ms per request in each stage (`/v2/models/stats`, deltas over each perf_analyzer run): queue = waiting "
             "for an instance; in/out = copying inputs into and outputs out of the model (for a Python-backend model, "
             "through its stub's shared memory); infer = running it. `stca_split` runs both halves in one process; the "
             "milliseconds of each half inside its infer come from its own `stca_split_half_ms` metric.", ""]
    by_key = {(c["precision"], c["load"], c["model"]): c for c in r["cells"]}
    head = "| precision | load | conc. | stca: q / in / infer / out per model | fused q / infer | stca req/s | fused req/s |"
    lines += [head, "|---|---|---:|---|---|---:|---:|"]
    for (precision, load, model), cell in by_key.items():
        fused = by_key.get((precision, load, FUSED))
        if model != ENSEMBLE or not cell["rows"]:
            continue
        mine, theirs = stage_rows(cell), stage_rows(fused) if fused and fused["rows"] else {}
        top = best(cell)["concurrency"]
        for conc in sorted({min(mine), top}):
            stages = mine.get(conc, {})
            if not stages:
                continue
            s_row = next(x for x in cell["rows"] if x["concurrency"] == conc)
            parts = "; ".join(f"{SHORT_NAMES[m]} " + " / ".join(f"{t[s]:.1f}" for s in STAGES) for m, t in stages.items())
            if s_row.get("split_halves_ms"):
                parts += " (infer: encoder {encoder:.1f} + scorer {scorer:.1f})".format(**s_row["split_halves_ms"])
            f = theirs.get(conc, {}).get(FUSED)
            f_row = next((x for x in fused["rows"] if x["concurrency"] == conc), None) if fused else None
            lines.append(f"| {precision} | {load} | {conc} | {parts} | "
                         + (f"{f['queue_ms']:.1f} / {f['compute_infer_ms']:.1f} | " if f else "| ")
                         + f"{s_row['throughput']:.1f} | " + (f"{f_row['throughput']:.1f} |" if f_row else " |"))
    return lines + [""]


def bar_segments(row: dict) -> list[tuple[str, float]]:
    """One perf_analyzer row's ms per request as (label, ms) segments, in order: each composing model's stages; for
    stca_split, its infer divided into the encoder, the scorer and the rest (the stub's own work)."""
    segments = []
    for t in row.get("stages", []):
        for stage in STAGES:
            if stage == "compute_infer_ms" and row.get("split_halves_ms"):
                halves = row["split_halves_ms"]
                segments += [("encoder (in split)", halves["encoder"]), ("scorer (in split)", halves["scorer"]),
                             ("split infer, rest", max(0.0, t[stage] - halves["encoder"] - halves["scorer"]))]
            else:
                segments.append((f"{SHORT_NAMES[t['model']]} {STAGE_NAMES[stage]}", t[stage]))
    return segments


def _budget_markdown(r: dict) -> list[str]:
    lines = []
    for precision, budget in (r.get("thread_budgets") or {}).items():
        if not budget:
            continue
        lines += [f"## CPU thread budget, {precision} repository ({budget['cpu_threads']} cores, chosen by {budget['chosen_by']})", ""]
        tuning = budget.get("tuning")
        if tuning:
            lines += [f"`python -m compiler tune` on {tuning['load']}, N={tuning['candidates_per_request']}, best over concurrency "
                      f"{tuning['concurrency']}; instances x intra-op threads per model:", "", *tuning_table(tuning), ""]
    return lines


def tuning_table(tuning: dict) -> list[str]:
    """tune's sweep (a thread budget's "tuning"): each candidate's placements and what each tuned model served under it."""
    models, placed = list(tuning["sweep"][0]["throughput"]), list(tuning["sweep"][0]["placements"])
    lines = ["| " + " | ".join(SHORT_NAMES[m] for m in placed) + " | " + " | ".join(f"{m} req/s" for m in models) + " |",
             "|" + "---|" * len(placed) + "---:|" * len(models)]
    for entry in tuning["sweep"]:
        lines.append("| " + " | ".join(Placement(**entry["placements"][m]).label() for m in placed) + " | "
                     + " | ".join(f"{entry['throughput'][m]:.1f}" for m in models) + " |")
    return lines


def _breakdown_data(r: dict):
    """precision -> [(load, {model: its concurrency-1 bar_segments})] for stca and stca_fused, where stca has rows."""
    found = {}
    for precision in r["config"]["precisions"]:
        by_key = {(c["load"], c["model"]): c for c in r["cells"] if c["precision"] == precision}
        loads = []
        for load in [load for (load, model), c in by_key.items() if model == ENSEMBLE and c["rows"]]:
            bars = {}
            for model in (ENSEMBLE, FUSED):
                cell = by_key.get((load, model))
                row = next((x for x in cell["rows"] if x["concurrency"] == 1), None) if cell else None
                bars[model] = bar_segments(row) if row else []
            loads.append((load, bars))
        found[precision] = loads
    return found if any(bars[m] for loads in found.values() for _, bars in loads for m in bars) else None


def _plot_breakdown(path: Path, r: dict, stamp: str, data: dict) -> None:
    """Stacked bars per load: stca's composing models' stages (stca_split's infer by half) beside stca_fused's, ms per
    request at concurrency 1."""
    plt, fig, axes = _figure(len(data), "Where one request's time goes (concurrency 1, Triton per-model statistics)", stamp)
    colors: dict[str, str] = {}  # segment label -> its color, the same in every bar and panel
    palette = plt.get_cmap("tab20").colors
    for ax, (precision, loads) in zip(axes, data.items()):
        labelled = set()
        for i, (load, bars) in enumerate(loads):
            for offset, model in ((-0.2, ENSEMBLE), (0.2, FUSED)):
                bottom = 0.0
                for name, value in bars[model]:
                    color = colors.setdefault(name, palette[len(colors) % len(palette)])
                    ax.bar(i + offset, value, 0.38, bottom=bottom, color=color, label=None if name in labelled else name)
                    labelled.add(name)
                    bottom += value
        ax.set_xticks(range(len(loads)), [load for load, _ in loads], rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{precision}: " + ("left bar stca (split), right bar stca_fused" if FUSED in r["config"]["models"] else "stca (split)"),
               ylabel="ms per request")
        _legend(ax)
    _save(plt, fig, path)


def _figure(n: int, title: str, stamp: str, width: float = 6.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.6), dpi=100, squeeze=False)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, stamp, ha="center", fontsize=6.5, wrap=True)
    return plt, fig, axes[0]


THROUGHPUT_LOAD = load_label(2_000, 128)  # the load of the throughput-against-concurrency plot, where the run has it
LATENCY_CANDIDATES = 128  # the N of the latency-against-history plot, where the run measured it


def throughput_load(r: dict) -> str:
    """THROUGHPUT_LOAD where the run measured it, else its fixed load with the most work (L x N)."""
    fixed = {c["load"]: c["history"] * c["candidates"] for c in r["cells"] if c["rows"] and c["load"] == load_label(c["history"], c["candidates"])}
    return THROUGHPUT_LOAD if THROUGHPUT_LOAD in fixed or not fixed else max(fixed, key=fixed.get)


def latency_candidates(r: dict) -> int:
    """LATENCY_CANDIDATES where the run measured it, else the run's N nearest to it."""
    return min(r["config"].get("candidates") or (LATENCY_CANDIDATES,), key=lambda n: abs(n - LATENCY_CANDIDATES))


def _throughput_data(r: dict):
    """precision -> the cells of throughput_load(r) with rows."""
    load = throughput_load(r)
    found = {p: [c for c in r["cells"] if c["precision"] == p and c["load"] == load and c["rows"]] for p in r["config"]["precisions"]}
    return found if any(found.values()) else None


def _plot_throughput(path: Path, r: dict, stamp: str, data: dict) -> None:
    plt, fig, axes = _figure(len(data), f"Throughput against concurrency, {throughput_load(r)}", stamp)
    for ax, (precision, cells) in zip(axes, data.items()):
        for cell in cells:
            ax.plot([x["concurrency"] for x in cell["rows"]], [x["throughput"] for x in cell["rows"]], marker="o", label=NAMES[cell["model"]])
        ax.set(title=precision, xlabel="concurrent requests", ylabel="requests / s", yscale="log")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    _save(plt, fig, path)


def _latency_data(r: dict):
    """precision -> {model: its cells at N=latency_candidates(r) on fixed-L loads measured at concurrency 1, by L}."""
    found, N = {}, latency_candidates(r)
    for precision in r["config"]["precisions"]:
        found[precision] = {}
        for model in r["config"]["models"]:
            cells = sorted((c for c in r["cells"] if c["precision"] == precision and c["model"] == model and c["candidates"] == N
                            and c["load"] == load_label(c["history"], c["candidates"]) and c["rows"] and c["rows"][0]["concurrency"] == 1),
                           key=lambda c: c["history"])
            if cells:
                found[precision][model] = cells
    return found if any(found.values()) else None


def _plot_latency(path: Path, r: dict, stamp: str, data: dict) -> None:
    plt, fig, axes = _figure(len(data), f"p50 latency at concurrency 1 against history length, N={latency_candidates(r)}", stamp)
    for ax, (precision, models) in zip(axes, data.items()):
        for model, cells in models.items():
            ax.plot([c["history"] for c in cells], [c["rows"][0]["p50_ms"] for c in cells], marker="o", label=NAMES[model])
        ax.set(title=precision, xlabel="history length L", ylabel="p50 latency (ms)", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    _save(plt, fig, path)


def _speedup_data(r: dict):
    """precision -> speedups() rows, where some baseline the run measured has a ratio."""
    measured = measured_baselines(r)
    rows = speedups(r)
    if not any(s[b] for s in rows for b in measured):
        return None
    return {p: [s for s in rows if s["precision"] == p] for p in r["config"]["precisions"]}


def _plot_speedup(path: Path, r: dict, stamp: str, data: dict) -> None:
    measured = measured_baselines(r)
    plt, fig, axes = _figure(len(data), "Speedup of the split ensemble over each baseline (best throughput ratio)", stamp)
    for ax, (precision, mine) in zip(axes, data.items()):
        width = 0.8 / len(measured)
        for k, baseline in enumerate(measured):
            xs = [i + (k - (len(measured) - 1) / 2) * width for i, x in enumerate(mine) if x[baseline]]
            ax.bar(xs, [x[baseline] for x in mine if x[baseline]], width, label=f"over {NAMES[baseline]}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(mine)), [x["load"] for x in mine], rotation=45, ha="right", fontsize=7)
        ratios = [x[b] for x in mine for b in measured if x[b]]
        ax.set(title=precision, ylabel="speedup (x)", yscale="log" if ratios and max(ratios) / min(ratios) > 10 else "linear")
        _legend(ax)
    _save(plt, fig, path)


def _precision_data(r: dict):
    return precision_ratios(r)


def _plot_precision(path: Path, r: dict, stamp: str, rows: list[dict]) -> None:
    """int8 over fp32 per load: each model's best-throughput ratio, one bar per model."""
    models = [m for m in r["config"]["models"] if any(m in row["models"] for row in rows)]
    plt, fig, axes = _figure(1, "int8 against fp32: best throughput of the int8 build over the fp32 build's", stamp, width=9.0)
    ax = axes[0]
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        bars = [(i, row["models"][model]) for i, row in enumerate(rows) if model in row["models"]]
        ax.bar([i + (k - (len(models) - 1) / 2) * width for i, _ in bars], [int8 / fp32 for _, (fp32, int8) in bars], width, label=NAMES[model])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [row["load"] for row in rows], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="int8 req/s / fp32 req/s")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax)
    _save(plt, fig, path)


# file -> (what it would draw, or nothing: then it is not written; how to draw it), in results.md's order
PLOTS = {
    "throughput_vs_concurrency.png": (_throughput_data, _plot_throughput),
    "latency_vs_history.png": (_latency_data, _plot_latency),
    "speedup.png": (_speedup_data, _plot_speedup),
    "breakdown.png": (_breakdown_data, _plot_breakdown),
    "int8_vs_fp32.png": (_precision_data, _plot_precision),
    "repeated_users.png": (_repeated_data, _plot_repeated),
    "encoder_vs_computed_rows.png": (_encoder_rows_data, _plot_encoder_rows),
}


def _legend(ax, **where) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **where)
    else:
        ax.text(0.5, 0.5, "no measured cells", ha="center", va="center", transform=ax.transAxes)
