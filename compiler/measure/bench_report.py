"""results.md and the plots of a benchmark run, each stamped with the machine, versions, model and shapes."""

from pathlib import Path

from compiler.core.names import ENCODER, ENSEMBLE, FUSED, NAIVE, SCORER, SHORT_NAMES, TORCH
from compiler.measure.bench_repeated import hit_rate
from compiler.measure.perf import load_label
from compiler.repository.budget import Placement
from compiler.stca.costmodel import peaks_text

NAMES = {ENSEMBLE: "stca (split ensemble)", FUSED: "stca_fused (unsplit)", NAIVE: "stca_naive (point-wise)", TORCH: "stca_torch (PyTorch eager)"}


def write(out: Path, results: dict) -> None:
    """results.md, and the plots of the suites the run measured (compiler.measure.bench.SUITES)."""
    stamp = _stamp(results)
    (out / "results.md").write_text("\n".join(_markdown(results, stamp)) + "\n")
    if results["cells"]:
        _plot_throughput(out / "throughput_vs_concurrency.png", results, stamp)
        _plot_latency(out / "latency_vs_history.png", results, stamp)
        _plot_speedup(out / "speedup.png", results, stamp)
        _plot_breakdown(out / "breakdown.png", results, stamp)
    if results.get("repeated_users"):
        _plot_encoder_rows(out / "encoder_vs_computed_rows.png", results, stamp)


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
        for baseline in (FUSED, NAIVE, TORCH):
            other = by_key.get((precision, load, baseline))
            row[baseline] = best(cell)["throughput"] / best(other)["throughput"] if other and other["rows"] else None
        rows.append(row)
    return rows


def _stamp(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    cpu = f"{m.get('cpu_model', m['processor'])} ({m['processor']}; {' '.join(m.get('isa', [])) or 'ISA flags not recorded'})"
    c = r.get("model_config")
    model = (f"model D={c['n_heads'] * c['head_dim']} h={c['n_heads']} M={c['n_layers']} attention={c['attention']}, L<={c['max_history']}"
             if c else f"model {r['model']['kind']} {Path(r['model']['path']).name}, "
             + ", ".join(f"{dim}<={size}" for dim, size in r["contract"]["limits"].items()))
    by_library = peaks_text(r.get("gemm_peaks", {}))
    return (f"{cpu} x{m['cpus']} CPUs, peak {r['gemm_peak_flops'] / 1e9:.0f} GFLOP/s fp32"
            + (f" (2048³ matmul, best of {by_library})" if by_library else "") + "; "
            f"tritonserver {v.get('tritonserver', '?').split(' ')[0]}, onnxruntime {v['onnxruntime']}, torch {v['torch']}; "
            f"{model}; {r['config']['protocol']}")


def _gflops(cell: dict) -> str:
    return "-" if cell["flops_per_request"] is None else f"{cell['flops_per_request'] / 1e9:.3f}"


def _of_peak(row: dict) -> str:
    return "-" if row.get("fraction_of_peak") is None else f"{100 * row['fraction_of_peak']:.1f}%"


def _markdown(r: dict, stamp: str) -> list[str]:
    lines = [f"# Benchmark `{r['name']}`", "", f"Recorded {r['created']}. {stamp}.", "",
             "Reproduce: `python -m compiler bench --name " + r["name"] + "` (see docs/benchmarks.md). Throughput is requests/s "
             "(each request scores all N candidates); latencies are perf_analyzer's client-side percentiles; "
             "\"% of peak\" is achieved FLOP/s (throughput x FLOPs per request, compiler/stca/costmodel.py) over the peak above.", ""]
    for precision in r["config"]["precisions"] if r["cells"] else []:
        gate = r.get("gates", {}).get(precision)
        if gate and not gate["passed"]:
            lines += [f"**The {precision} build missed its accuracy gate** ({'; '.join(gate['failures'][:3])}); its speed is "
                      "measured all the same.", ""]
        lines += [f"## {precision}: best throughput over concurrency {r['config']['concurrency']}", "",
                  "| load | model | req/s | at conc. | p50 ms | p99 ms | GFLOP/request | % of peak |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for cell in (c for c in r["cells"] if c["precision"] == precision):
            b = best(cell)
            if b is None:
                lines.append(f"| {cell['load']} | {cell['model']} | dropped | | | | {_gflops(cell)} | |")
                continue
            lines.append(f"| {cell['load']} | {cell['model']} | {b['throughput']:.1f} | {b['concurrency']} | {b['p50_ms']:.1f} | "
                         f"{b['p99_ms']:.1f} | {_gflops(cell)} | {_of_peak(b)} |")
        lines.append("")
    lines += _breakdown_markdown(r) if r["cells"] else []
    lines += _budget_markdown(r)
    cut = r["config"].get("cut_dtype")
    built = r["config"]["precisions"][0] + (f", the cut in {cut}" if cut else "")
    lines += _repeated_markdown(r["repeated_users"], built) if r.get("repeated_users") else []
    lines += [] if not r["cells"] else ["## Speedup of `stca` (split) over each baseline", "", "Ratio of best throughputs on the same server and inputs.", "",
              "| precision | load | over stca_fused | over stca_naive | over stca_torch |", "|---|---|---:|---:|---:|"]
    for s in speedups(r):
        fmt = lambda x: "dropped" if x is None else f"{x:.2f}x"  # noqa: E731
        lines.append(f"| {s['precision']} | {s['load']} | {fmt(s[FUSED])} | {fmt(s[NAIVE])} | {fmt(s[TORCH])} |")
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
              f"candidates (N={rc['candidates']}), concurrency 1, `stca` fp32:", "",
              "| | req/s | p50 ms |", "|---|---:|---:|",
              f"| cache on | {rc['throughput_cached']:.1f} | {rc['p50_ms_cached']:.1f} |",
              f"| cache off | {rc['throughput_uncached']:.1f} | {rc['p50_ms_uncached']:.1f} |", "",
              f"Hit rate on one cold pass over the {rc['users'] * rc['requests_per_user']} requests: {rc['hit_rate']:.3f} ({rc['hits']:.0f} hits, "
              f"{rc['misses']:.0f} misses, from Triton's metrics; {rc['expected_hit_rate']:.3f} expected: every request but each user's first). "
              f"Throughput is measured with the cache warm (perf_analyzer cycles through the requests): {rc['speedup']:.2f}x."]
    history = r["attention_check"][0]["history"] if r.get("attention_check") else 0
    lines += [] if not history else ["", "## Attention form: cost model against measurement", "",
              f"Both forms of the same weights, split graphs in ONNX Runtime in one process, L={history}, median of 7.", "",
              "| N | kv ms | reordered ms | kv GFLOP | reordered GFLOP | cost model picks | faster measured |", "|---:|---:|---:|---:|---:|---|---|"]
    for a in r.get("attention_check") or []:
        lines.append(f"| {a['candidates']} | {a['kv_ms']:.2f} | {a['reordered_ms']:.2f} | {a['kv_flops'] / 1e9:.3f} | "
                     f"{a['reordered_flops'] / 1e9:.3f} | {a['predicted']} | {a['measured']}{'' if a['agree'] else ' (disagrees)'} |")
    lines += [] if not r["cells"] else ["", "![throughput](throughput_vs_concurrency.png)", "", "![latency](latency_vs_history.png)",
                                        "", "![speedup](speedup.png)", "", "![breakdown](breakdown.png)"]
    return lines


def _repeated_markdown(rep: dict, precision: str) -> list[str]:
    """The repeated-users suite (compiler.measure.bench_repeated): the ways to serve the same traffic, where the encoder's
    time goes, and the memory of the process holding the cache."""
    t, variants = rep["traffic"], rep["variants"]
    fused_best = max(row["throughput"] for row in variants["fused"]["rows"])
    levels = [row["concurrency"] for row in variants["fused"]["rows"]]
    lines = ["## Repeated users: the history row cache", "",
             f"Per concurrency level, {t['users']} fresh users x {t['visits']} visits (visit-major), each request sent once in order; "
             f"before the levels, a warm-up pass of {rep['warmup_users']} other users. Each user's first history has a KuaiRand-1K "
             f"length; each later visit adds 1 + Poisson({t['new_items_mean'] - 1:g}) interactions and ages every item by an "
             f"Exponential({t['visit_gap_mean_s'] / 3600:g} h) gap; items from a Zipf({t['zipf_exponent']}) popularity over "
             f"{t['catalog']:,} items (compiler.stca.data.RepeatedUsers). Mean L = {rep['mean_history']:.0f}, N = {rep['candidates']}, "
             f"{precision}. Each variant on a fresh server (an empty cache); throughput = requests / wall time.", "",
             f"| variant | req/s at conc. {' / '.join(map(str, levels))} | best | over stca_fused | p50 ms (conc. 1) | "
             "hit rate per level | encoder infer ms | scorer infer ms |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for name, v in variants.items():
        rows = v["rows"]
        top = max(r["throughput"] for r in rows)
        stages = {s["model"]: s for s in rows[0]["stages"]}
        hits = " / ".join(f"{hit_rate(row['cache']):.2f}" for row in rows if row.get("cache") and v["model"] == ENSEMBLE) or "-"
        enc = stages.get(ENCODER, {}).get("compute_infer_ms")
        sco = stages.get(SCORER, stages.get(FUSED, {})).get("compute_infer_ms")
        per_level = " / ".join(f"{row['throughput']:.1f}" for row in rows)
        lines.append(f"| {name} (`{v['model']}`) | {per_level} | {top:.1f} | "
                     f"{top / fused_best:.2f}x | {rows[0]['p50_ms']:.0f} | {hits} | "
                     + (f"{enc:.1f}" if enc is not None else "-") + " | " + (f"{sco:.1f}" if sco is not None else "-") + " |")
    lines += ["", "Hit rate: distinct row keys found in the cache over distinct keys looked up, per level (Triton's "
              "`stca_history_cache_*` metrics). Infer ms: Triton's compute_infer per request at concurrency 1 (for stca_fused, "
              "the whole graph in the scorer column).", ""]
    cached = variants["row cache"]
    fit = _encoder_fit(cached["per_request"])
    if fit is not None:
        lines += [f"Encoder time per request against the rows it computed (concurrency 1, {len(cached['per_request'])} requests "
                  f"of {cached['per_request'] and min(p['history'] for p in cached['per_request'])}.."
                  f"{max(p['history'] for p in cached['per_request'])} items): least squares ms = {fit[0]:.2f} "
                  f"+ {1e3 * fit[1]:.3f} per 1,000 computed rows + {1e3 * fit[2]:.3f} per 1,000 history items "
                  "(the key graph, the lookup and the assembly). Without the cache every item is computed: "
                  + ", ".join(f"L={p['history']}: {p['encoder_ms']:.1f} ms" for p in sorted(variants['no cache']['per_request'],
                                                                                        key=lambda p: p['history'])[::3]) + ".", "",
                  "![encoder time against computed rows](encoder_vs_computed_rows.png)", ""]
    lines += ["Resident memory of the processes holding the cache (the history encoder's without one; one per instance), MiB:", "",
              "| variant | process | before the traffic | after | the cache's bytes gauge | rows held | rows evicted |",
              "|---|---|---|---|---:|---:|---:|"]
    for name in (n for n in ("row cache, one process", "row cache", "row cache in the scorer", "no cache") if n in variants):
        v = variants[name]
        mib = lambda xs: ", ".join(f"{x / 2**20:.0f}" for x in xs) or "-"  # noqa: E731
        held = v["cache"]
        lines.append(f"| {name} | `{v.get('cache_holder', ENCODER)}` | {mib(v['memory_before'])} | {mib(v['memory_after'])} | "
                     + (f"{held['bytes'] / 2**20:.0f} | {held['entries']:,.0f} | {held['evictions']:,.0f}" if held else "- | - | -") + " |")
    return lines + [""]


def _encoder_fit(points: list[dict]):
    """Least squares encoder_ms = a + b * computed_rows + c * history over the per-request points; None if too few."""
    import numpy as np

    if len(points) < 4:
        return None
    X = np.array([[1.0, p["computed_rows"], p["history"]] for p in points])
    return np.linalg.lstsq(X, np.array([p["encoder_ms"] for p in points]), rcond=None)[0]


def _plot_encoder_rows(path: Path, r: dict, stamp: str) -> None:
    variants = r["repeated_users"]["variants"]
    plt, fig, axes = _figure(1, "History encoder time per request against the rows it computed", stamp)
    ax = axes[0]
    for name, marker in (("row cache", "o"), ("no cache", "x")):
        points = variants[name]["per_request"]
        ax.scatter([p["computed_rows"] for p in points], [p["encoder_ms"] for p in points], marker=marker,
                   label=f"{name}: computed rows" + (" = L" if name == "no cache" else " = cache misses"))
    ax.set(xlabel="rows computed by the encoder", ylabel="encoder compute_infer (ms)")
    ax.grid(True, alpha=0.3)
    _legend(ax)
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
            models, placed = list(tuning["sweep"][0]["throughput"]), list(tuning["sweep"][0]["placements"])
            lines += [f"`python -m compiler tune` on {tuning['load']}, N={tuning['candidates_per_request']}, best over concurrency "
                      f"{tuning['concurrency']}; instances x intra-op threads per model:", "",
                      "| " + " | ".join(SHORT_NAMES[m] for m in placed) + " | " + " | ".join(f"{m} req/s" for m in models) + " |",
                      "|" + "---|" * len(placed) + "---:|" * len(models)]
            for entry in tuning["sweep"]:
                lines.append("| " + " | ".join(Placement(**entry["placements"][m]).label() for m in placed) + " | "
                             + " | ".join(f"{entry['throughput'][m]:.1f}" for m in models) + " |")
            lines.append("")
    return lines


def _plot_breakdown(path: Path, r: dict, stamp: str) -> None:
    """Stacked bars per load: stca's composing models' stages (stca_split's infer by half) beside stca_fused's, ms per
    request at concurrency 1."""
    precisions = r["config"]["precisions"]
    plt, fig, axes = _figure(len(precisions), "Where one request's time goes (concurrency 1, Triton per-model statistics)", stamp)
    colors: dict[str, str] = {}  # segment label -> its color, the same in every bar and panel
    palette = plt.get_cmap("tab20").colors
    for ax, precision in zip(axes, precisions):
        by_key = {(c["load"], c["model"]): c for c in r["cells"] if c["precision"] == precision}
        loads = [load for (load, model), c in by_key.items() if model == ENSEMBLE and c["rows"]]
        labelled = set()
        for i, load in enumerate(loads):
            for offset, model in ((-0.2, ENSEMBLE), (0.2, FUSED)):
                cell = by_key.get((load, model))
                row = next((x for x in cell["rows"] if x["concurrency"] == 1), None) if cell else None
                bottom = 0.0
                for name, value in bar_segments(row) if row else []:
                    color = colors.setdefault(name, palette[len(colors) % len(palette)])
                    ax.bar(i + offset, value, 0.38, bottom=bottom, color=color, label=None if name in labelled else name)
                    labelled.add(name)
                    bottom += value
        ax.set_xticks(range(len(loads)), loads, rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{precision}: left bar stca (split), right bar stca_fused", ylabel="ms per request")
        _legend(ax)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _figure(n: int, title: str, stamp: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.6), dpi=100, squeeze=False)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, stamp, ha="center", fontsize=6.5, wrap=True)
    return plt, fig, axes[0]


def _plot_throughput(path: Path, r: dict, stamp: str, load: str = load_label(2_000, 128)) -> None:
    precisions = r["config"]["precisions"]
    plt, fig, axes = _figure(len(precisions), f"Throughput against concurrency, {load}", stamp)
    for ax, precision in zip(axes, precisions):
        for cell in (c for c in r["cells"] if c["precision"] == precision and c["load"] == load and c["rows"]):
            ax.plot([x["concurrency"] for x in cell["rows"]], [x["throughput"] for x in cell["rows"]], marker="o", label=NAMES[cell["model"]])
        ax.set(title=precision, xlabel="concurrent requests", ylabel="requests / s", yscale="log")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _plot_latency(path: Path, r: dict, stamp: str, candidates: int = 128) -> None:
    precisions = r["config"]["precisions"]
    plt, fig, axes = _figure(len(precisions), f"p50 latency at concurrency 1 against history length, N={candidates}", stamp)
    for ax, precision in zip(axes, precisions):
        for model in r["config"]["models"]:
            cells = sorted((c for c in r["cells"] if c["precision"] == precision and c["model"] == model and c["candidates"] == candidates
                            and c["load"] == load_label(c["history"], c["candidates"]) and c["rows"] and c["rows"][0]["concurrency"] == 1), key=lambda c: c["history"])
            if cells:
                ax.plot([c["history"] for c in cells], [c["rows"][0]["p50_ms"] for c in cells], marker="o", label=NAMES[model])
        ax.set(title=precision, xlabel="history length L", ylabel="p50 latency (ms)", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _plot_speedup(path: Path, r: dict, stamp: str) -> None:
    rows = speedups(r)
    precisions = r["config"]["precisions"]
    plt, fig, axes = _figure(len(precisions), "Speedup of the split ensemble over each baseline (best throughput ratio)", stamp)
    for ax, precision in zip(axes, precisions):
        mine = [x for x in rows if x["precision"] == precision]
        width = 0.27
        for k, baseline in enumerate((FUSED, NAIVE, TORCH)):
            xs = [i + (k - 1) * width for i, x in enumerate(mine) if x[baseline]]
            ax.bar(xs, [x[baseline] for x in mine if x[baseline]], width, label=f"over {NAMES[baseline]}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(mine)), [x["load"] for x in mine], rotation=45, ha="right", fontsize=7)
        ax.set(title=precision, ylabel="speedup (x)", yscale="log")
        _legend(ax)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no measured cells", ha="center", va="center", transform=ax.transAxes)
