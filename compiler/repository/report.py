"""report.md for a build: what was built, the cut, and the verification numbers, as tables (and a plot)."""

from collections import Counter
from pathlib import Path

from compiler.load.subject import Subject
from compiler.passes.row_locality import RowLocality
from compiler.passes.partition import Cut
from compiler.repository.manifest import BuildRecord
from compiler.runtime.row_cache import entry_bytes
from compiler.stca.costmodel import crossover_candidates, row_bytes, split_cost
from compiler.stca.model import ATTENTION_FORMS, STCAConfig
from compiler.verify.gates import TAU_MIN_CANDIDATES, Verification


def write(directory: Path, result: BuildRecord, subject: Subject) -> Path:
    """report.md of a build (its BuildRecord and the subject it compiled)."""
    path = Path(directory) / "report.md"
    path.write_text("\n".join(_lines(result, subject)) + "\n")
    return path


def plot_error_vs_length(directory: Path, verification: Verification) -> Path:
    """error_vs_length.png: max and mean abs score error against history length, one line per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(directory) / "error_vs_length.png"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for N in sorted({c.N for c in verification.cases}):
        cases = sorted((c for c in verification.cases if c.N == N), key=lambda c: c.L)
        line, = ax.plot([c.L for c in cases], [c.max_abs_error for c in cases], marker="o", label=f"N={N} max")
        ax.plot([c.L for c in cases], [c.mean_abs_error for c in cases], marker=".", linestyle="--", color=line.get_color(),
                label=f"N={N} mean")
    if verification.thresholds.max_abs_error is not None:
        ax.axhline(verification.thresholds.max_abs_error, color="red", linewidth=0.8, label="gate")
    ax.set(xscale="log", yscale="symlog" if verification.max_abs_error == 0 else "log", xlabel="history length L",
           ylabel="|output - fp32 reference|", title=f"{verification.precision} graphs (ONNX Runtime, CPU) vs the fp32 model")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def cut_table(cut: Cut, contract) -> list[str]:
    """The cut (compiler.passes.partition.Cut) as markdown table lines, with bytes per request at the served maximum dims."""
    dims = contract.limits
    at = ", ".join(f"{dim}={size}" for dim, size in dims.items() if dim != contract.candidate_dim) or "any size"
    lines = [f"| tensor | dtype | shape | bytes/request at {at} |", "|---|---|---|---:|"]
    for t in cut.tensors:
        size = t.bytes_per_request(dims)
        lines.append(f"| `{t.name}` | {t.dtype} | {list(t.shape)} | {'?' if size is None else f'{size:,}'} |")
    total = cut.bytes_per_request(dims)
    lines.append("| **total** | | | ? |" if total is None else f"| **total** | | | **{total:,}** |")
    if cut.shared_weights:
        lines += ["", "| weight both halves hold | bytes |", "|---|---:|"]
        lines += [f"| `{w.name}` | {w.bytes:,} |" for w in cut.shared_weights]
    return lines


def _lines(r: BuildRecord, subject: Subject) -> list[str]:
    v, contract = r.verification, r.contract
    L = contract.max_history
    limits = ", ".join(f"{dim} <= {size}" for dim, size in contract.limits.items())
    lines = [
        "# stca-compiler build report",
        "",
        f"- created {r.created} in {r.build_seconds} s on {r.machine.platform} ({r.machine.describe()})",
        f"- model: {_model_line(r)}",
        f"- served limits: {limits}; opset {r.opset}; target `{r.target}`",
        f"- precision: encoder {r.half_precisions[0]}, scorer {r.half_precisions[1]}",
        f"- attention: {_attention_line(r)}",
        "- versions: " + ", ".join(f"{k} {value}" for k, value in r.versions.items()),
        "",
        f"## Verification: {'PASSED' if v.passed else 'FAILED'} ({v.precision} thresholds)",
        "",
    ]
    th = v.thresholds
    gates = [f"max abs error <= {th.max_abs_error:g}" if th.max_abs_error is not None else None,
             f"mean Kendall tau >= {th.kendall_tau} (cases with N >= {TAU_MIN_CANDIDATES})" if th.kendall_tau is not None else None,
             f"|AUC delta| <= {th.auc_delta}" if th.auc_delta is not None else None]
    reference = "the PyTorch fp32 model" if r.model_config is not None else f"your fp32 model ({_REFERENCE[r.source.kind]})"
    lines += [f"Gates: {'; '.join(g for g in gates if g)}. Outputs of the compiled encoder + scorer (ONNX Runtime, CPU) "
              f"against {reference} on held-out requests ({subject.request_source}).", ""]
    if v.note:
        lines += [f"Note: {v.note}.", ""]
    if r.accepted_accuracy_loss:
        lines += ["**Built with --accept-accuracy-loss: the gates below were missed.**", ""]
    lines += [
        "| L | N | requests | max abs error | mean abs error | Kendall tau (mean / min) | top-10 overlap | max abs AUC delta |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in v.cases:
        auc = "-" if case.auc_delta is None else f"{case.auc_delta:.4f}"
        lines.append(
            f"| {case.L} | {case.N} | {case.requests} | {case.max_abs_error:.2e} | {case.mean_abs_error:.2e} | "
            f"{case.kendall_tau_mean:.4f} / {case.kendall_tau_min:.4f} | {case.top10_overlap_mean:.3f} | {auc} |"
        )
    if v.auc:
        lines += ["", "AUC on labelled held-out requests (KuaiRand-1K lengths):", "",
                  "| task | PyTorch fp32 | compiled | delta |", "|---|---:|---:|---:|"]
        lines += [f"| {task} | {row['reference']:.4f} | {row['compiled']:.4f} | {row['delta']:+.5f} |" for task, row in v.auc.items()]
    if v.failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in v.failures]
    kept = r.precisions.int8_kept_float
    if kept:
        lines += ["", f"Layers kept out of int8 so the gates pass ({len(kept)}; compiler/precision/int8_fallback.py): each was quantized "
                  "alone and ranked by the ranking error it caused, and the worst went back to float, one per round.", "",
                  "| half | node | 1 - tau with only it in int8 | share of the half's int8 GEMM work |", "|---|---|---:|---:|"]
        lines += [f"| {k.layer.half} | `{k.layer.node}` | {k.layer.tau_deficit:.4f} | {100 * k.layer.weight_share:.1f}% |" for k in kept]
    if r.plots.get("error_vs_length"):
        lines += ["", f"![score error against history length]({r.plots['error_vs_length']})"]
    lines += ["", f"## The cut (bytes per request at {contract.history_dim or 'the served maximum'}={L})", "",
              "Tensors the history encoder computes once per request and every candidate's scoring reads.", ""]
    lines += cut_table(r.cut, contract)
    placed = Counter(reason.split(":")[0] for reason in r.cut.placement.values())
    lines += ["", "Node placement (manifest.json `placement` gives the reason for each node): "
              + ", ".join(f"{n} {kind}" for kind, n in placed.most_common()) + ".",
              ""]
    lines += history_cache_lines(r.history_cache)
    if r.model_config is not None and r.history_cache.row_local:
        lines += ["", *cached_attention_lines(r.model_config, r.history_cache, L)]
    lines += ["", "manifest.json lists the sha256 of every file of the build."]
    return lines


def _attention_line(r: BuildRecord) -> str:
    fused = {report.graph: report.onnxruntime_nodes for report in r.lint if report.onnxruntime_nodes}
    if not fused:
        return "as exported (MatMul, Add, Softmax, MatMul: the N x L scores held per layer)"
    return ("ONNX Runtime's fused MultiHeadAttention, which never holds the N x L scores (compiler/passes/fused_attention.py): "
            + ", ".join(f"{graph} {n} layers" for graph, n in fused.items()))


_REFERENCE = {"onnx": "the ONNX file on ONNX Runtime", "exported": "the ExportedProgram in PyTorch"}


def _model_line(r: BuildRecord) -> str:
    if r.model_config is None:
        c = r.contract
        return (f"{r.source.kind} `{r.source.path}` (sha256 {r.source.sha256[:12]}); request inputs "
                f"{', '.join(f'`{n}`' for n in c.request_inputs)}; per candidate along `{c.candidate_dim}`: "
                f"{', '.join(f'`{n}`' for n in c.candidate_inputs)}; outputs {', '.join(f'`{n}`' for n in c.outputs)}")
    c = r.model_config
    origin = f"preset `{r.source.preset}`" if r.source.kind == "seeded" else f"`{r.source.path}`"
    return (f"{r.source.kind} {origin}; D={c.n_heads * c.head_dim} (h={c.n_heads}, d_h={c.head_dim}), M={c.n_layers}, "
            f"attention `{c.attention}`, tasks {', '.join(c.tasks)}")


def history_cache_lines(record: RowLocality) -> list[str]:
    """The report's account of the encoder's row locality (compiler.passes.row_locality)."""
    lines = ["## History row cache", ""]
    if not record.row_local:
        return lines + [f"None: {record.why}. Every request encodes its whole history."]
    keys = ", ".join(f"`{k['source']}` ({k['dtype']})" for k in record.row_graphs["keys"])
    lines += [f"Each row of {', '.join(f'`{n}`' for n in record.row_graphs['cached'])} is a function of one key per history item: {keys} "
              f"({record.row_graphs['bytes_per_row']} bytes a row). Checked against the encoder at L = "
              f"{', '.join(map(str, record.confirmed_at_lengths))} and a left-padded request: largest difference "
              f"{max(record.confirmed_max_abs_difference.values()):.1e}."]
    if record.served:
        lines += ["", f"Served: the history encoder keeps up to {record.budget_bytes / 2**20:.0f} MiB of rows (over its instances), "
                  "computes only distinct missing keys, and reports `stca_history_cache_*` on Triton's /metrics."]
        multiplicity = record.row_graphs.get("multiplicity")
        lines += ["", f"Repeated rows: each distinct key's rows reach the scorer once, `{multiplicity}` raised by the log of "
                  f"the key's count (the scorer reads the history as a multiset; checked on repeated and reordered rows: "
                  f"{record.multiplicity_check})." if multiplicity else
                  f"Repeated rows: every row reaches the scorer ({record.multiplicity_check or 'not checked'})."]
    else:
        lines += ["", "Not served by this repository (the python target serves it; --history-cache-bytes 0 turns it off)."]
    return lines


def cached_attention_lines(c: STCAConfig, record: RowLocality, L: int) -> list[str]:
    """What each attention form costs with the history row cache (compiler.stca.costmodel): bytes a cached row, and
    so users in the budget, the encoder's work per row it misses and the scorer's per candidate; which form to serve."""
    cached = record.row_graphs["cached"]
    width = next(("fp16" if t["dtype"] == "float16" else "fp32") for name, t in cached.items() if t["row_shape"])
    budget = record.budget_bytes if record.served else 1 << 30
    lines = [f"### Attention form with the cache (cost model, L={L:,})", "",
             f"| form | bytes a cached row | rows in {'the budget' if record.served else '1 GiB'} (histories of L={L:,}) "
             "| encoder MFLOP per missed row | scorer MFLOP per candidate |", "|---|---:|---:|---:|---:|"]
    for form in ATTENTION_FORMS:
        one = split_cost(c, L, 1, form)
        size = row_bytes(c, form, width)
        rows = budget // entry_bytes(size, len(record.row_graphs["keys"]))
        lines.append(f"| `{form}`{' (served)' if form == c.attention else ''} | {size:,} | {rows:,} ({rows // L:,}) | "
                     f"{one.encoder_flops / L / 1e6:.3g} | {one.scorer_flops / 1e6:.3g} |")
    unique, warm = crossover_candidates(c, L), crossover_candidates(c, L, new_rows=0.1)
    return lines + ["", f"A request pays the encoder's work for the rows the cache misses and the scorer's for every candidate. "
                        f"`kv` costs less above N = {unique:.0f} candidates when no row is cached, above N = {warm:.0f} at a "
                        "90% hit rate, at any N once every row is; `reordered` keeps half the bytes a row, so twice the rows fit (a row is an item's: "
                        "users who share items share rows). "
                        "`--attention auto --expected-candidates N --expected-hit-rate H` picks by this."]

