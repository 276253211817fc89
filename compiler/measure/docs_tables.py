"""The docs' numbers from recorded runs, written from the runs themselves.

In README.md and docs/**/*.md, every block between

    <!-- results:RUN:KIND -->
    ...
    <!-- /results -->

is generated from benchmarks/results/RUN/results.json by KIND (the KINDS below); every other line is left as it is.
Each benchmarks/results/*/results.md (and its plots) is written from its results.json by compiler.measure.bench_report.
The tables themselves are bench_report's; what is here is which of them a doc shows and the few sentences around them.

    regenerate(root)              rewrite every block and every results.md; the files that changed
    regenerate(root, check=True)  write nothing; the files that differ from what would be written
"""

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE, FUSED, TORCH
from compiler.measure import bench_report
from compiler.measure.bench_repeated import distinct_share, hit_rate
from compiler.measure.bench_report import best, speedups
from compiler.verify.gates import THRESHOLDS

RESULTS = Path("benchmarks") / "results"
OPEN = re.compile(r"^<!-- results:(?P<run>[A-Za-z0-9._-]+):(?P<kind>[A-Za-z0-9_-]+) -->$")
CLOSE = "<!-- /results -->"
MARKER = re.compile(r"^\s*<!--\s*/?\s*results\b")  # anything that looks like a marker must be one (outside ``` fences)
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Block:
    """Where a block is written: the doc (for its relative links) and the repository root."""
    root: Path
    doc: Path
    run: str

    def link(self, path: Path) -> str:
        return Path(os.path.relpath(self.root / path, self.doc.parent)).as_posix()

    @property
    def run_link(self) -> str:
        return self.link(RESULTS / self.run) + "/"


def regenerate(root: Path, check: bool = False) -> list[Path]:
    """Rewrite every marked block of README.md and docs/**/*.md under `root` (the repository root) from the results.json
    it names, and each benchmarks/results/*/results.md (with its plots, bench_report.write) from its results.json. Returns
    the files that changed; with check=True writes nothing, draws nothing and returns the files that differ (results.md
    by text; a plot only by whether it should exist). Every doc is rendered before anything is written, so a bad marker
    (an unknown kind, a run without results.json) raises CompilerError, naming the file, line and marker, with nothing
    written."""
    root = Path(root)
    loaded: dict[str, dict] = {}
    rendered = [(doc, text, render(root, doc, text, loaded)) for doc in _docs(root) for text in [doc.read_text()]]
    differ = [doc for doc, old, new in rendered if new != old]
    if not check:
        for doc, old, new in rendered:
            if new != old:
                doc.write_text(new)
    for path in sorted((root / RESULTS).glob("*/results.json")):
        differ += _run_files(path.parent, json.loads(path.read_text()), check)
    return differ


def render(root: Path, doc: Path, text: str, loaded: dict | None = None) -> str:
    """`text` (the contents of `doc`) with every marked block generated anew."""
    loaded = {} if loaded is None else loaded
    lines, out, i, fenced = text.split("\n"), [], 0, False
    where = lambda n: f"{doc.relative_to(root) if doc.is_relative_to(root) else doc}:{n + 1}"  # noqa: E731
    while i < len(lines):
        line = lines[i]
        fenced ^= bool(FENCE.match(line))
        if fenced or not MARKER.match(line):
            out.append(line)
            i += 1
            continue
        opened = OPEN.match(line.strip())
        if not opened:
            raise CompilerError(f"{where(i)}: {line.strip()!r} is not a results marker: blocks open with <!-- results:RUN:KIND --> "
                                f"and close with {CLOSE}")
        end = next((j for j in range(i + 1, len(lines)) if MARKER.match(lines[j])), None)
        if end is None or lines[end].strip() != CLOSE:
            raise CompilerError(f"{where(i)}: {line.strip()} is not closed by {CLOSE} before "
                                + ("the end of the file" if end is None else f"line {end + 1}"))
        run, kind = opened["run"], opened["kind"]
        if kind not in KINDS:
            raise CompilerError(f"{where(i)}: {line.strip()}: unknown table kind {kind!r}; the kinds are {', '.join(sorted(KINDS))}")
        if run not in loaded:
            path = root / RESULTS / run / "results.json"
            if not path.is_file():
                raise CompilerError(f"{where(i)}: {line.strip()}: no recorded run {run!r} ({path.relative_to(root)} does not exist)")
            loaded[run] = json.loads(path.read_text())
        try:
            body = KINDS[kind](loaded[run], Block(root, doc, run))
        except _NotInRun as e:
            raise CompilerError(f"{where(i)}: {line.strip()}: run {run!r} {e}") from None
        out += [line, "", *body, "", CLOSE]
        i = end + 1
    return "\n".join(out)


def _docs(root: Path) -> list[Path]:
    docs = [root / "README.md"] if (root / "README.md").is_file() else []
    return docs + sorted((root / "docs").rglob("*.md"))


def _run_files(out: Path, results: dict, check: bool) -> list[Path]:
    """results.md and the plots of one run: those that differ (check) or changed (written by bench_report.write). A run
    of a benchmark script of its own (results.json names its "suite") has its script's files: here only the results.md
    of those in SCRIPT_RUNS, by own_markdown."""
    if "suite" in results and results["suite"] not in SCRIPT_RUNS:
        return []
    if "suite" in results:
        md, text = out / "results.md", own_markdown(results)
        if md.is_file() and md.read_text() == text:
            return []
        if not check:
            md.write_text(text)
        return [md]
    files = [out / "results.md", *(out / name for name in bench_report.PLOTS)]
    if check:
        drawn = set(bench_report.plot_files(results))
        md = out / "results.md"
        stale = [md] if not md.is_file() or md.read_text() != bench_report.markdown(results) else []
        return stale + [f for f in files[1:] if f.is_file() != (f.name in drawn)]
    before = {f: f.read_bytes() if f.is_file() else None for f in files}
    bench_report.write(out, results)
    return [f for f in files if before[f] != (f.read_bytes() if f.is_file() else None)]


class _NotInRun(Exception):
    """The run lacks what the kind shows (a suite it did not measure)."""


# --- the kinds: each (results, block) -> the block's lines -----------------------------------------------------------


def summary(r: dict, b: Block) -> list[str]:
    """A recorded run in brief: when, on what machine, the command that recorded it, and its main tables (stca over
    each baseline, int8 against fp32, the repeated-users variants), the response cache and the attention check in a
    sentence each."""
    c = r["config"]
    lines = [f"Recorded {r['created'][:10]} on {bench_report.stamp(r)}. Every table and plot: "
             f"[`{(RESULTS / b.run).as_posix()}/results.md`]({b.run_link}results.md).", "", "```bash", bench_report.reproduce_command(r), "```", ""]
    for precision, gate in (r.get("gates") or {}).items():
        if not gate["passed"]:
            lines += [f"The {precision} build missed its accuracy gate ({'; '.join(gate['failures'][:3])}); its speed was measured "
                      "all the same.", ""]
    levels = "/".join(map(str, c["concurrency"]))
    table = bench_report.grid_table(r) if bench_report.measured_baselines(r) else []
    if table:
        lines += [f"Best throughput over concurrency {levels}, each model on the same server and inputs, and `stca` over each "
                  "baseline:", "", *table, ""]
    ratios = bench_report.precision_table(r)
    if ratios:
        lines += [f"int8 against fp32, best throughput over concurrency {levels}:", "", *ratios, ""]
    if r["cells"] and not table and not ratios:
        for precision in c["precisions"]:
            lines += [f"{precision}, best throughput over concurrency {levels}:", "", *bench_report.throughput_table(r, precision), ""]
    rc = r.get("response_cache")
    if rc:
        lines += [f"Response cache on the history encoder ({rc['users']} users x {rc['requests_per_user']} requests, one history each, "
                  f"L={rc['history']}, N={rc['candidates']}): hit rate {rc['hit_rate']:.3f} ({rc['expected_hit_rate']:.3f} expected), "
                  f"{rc['throughput_cached']:.1f} req/s with it against {rc['throughput_uncached']:.1f} without: {rc['speedup']:.2f}x.", ""]
    attention = r.get("attention_check")
    if attention:
        missed = [a for a in attention if not a["agree"]]
        lines += [f"Attention form at L={attention[0]['history']}: the cost model's pick was the faster form at "
                  f"{len(attention) - len(missed)} of {len(attention)} N"
                  + (" (not at " + ", ".join(f"N={a['candidates']}: {a['kv_ms']:.2f} ms kv against {a['reordered_ms']:.2f} reordered"
                                             for a in missed) + ")" if missed else "") + ".", ""]
    rep = r.get("repeated_users")
    if rep:
        t = rep["traffic"]
        lines += [f"Repeated users: {t['users']} fresh users x {t['visits']} visits per concurrency level, mean L = "
                  f"{rep['mean_history']:.0f}, N = {rep['candidates']}, {c['precisions'][0]}"
                  + (f", the cut in {c['cut_dtype']}" if c.get("cut_dtype") else "") + ":", "", *bench_report.repeated_table(rep), "",
                  *bench_report.repeated_distinct_lines(rep)]
    return lines[:-1]


def memory(r: dict, b: Block) -> list[str]:
    """The repeated-users suite's resident memory of the process holding the row cache."""
    return [_caption(r, b), "", *bench_report.repeated_memory_table(_repeated(r))]


def int8(r: dict, b: Block) -> list[str]:
    """int8 against fp32 per load (bench_report.precision_table)."""
    table = bench_report.precision_table(r)
    if not table:
        raise _NotInRun("measured no model in both fp32 and int8")
    return [_caption(r, b), "", *table]


def latency(r: dict, b: Block) -> list[str]:
    """One request at a time on the throughput plot's load (L=2000 N=128), the first precision: each model's latency and
    where its time went."""
    precision = r["config"]["precisions"][0]
    table = bench_report.latency_table(r, precision, bench_report.THROUGHPUT_LOAD)
    if not table:
        raise _NotInRun(f"has no {precision} cell at {bench_report.THROUGHPUT_LOAD} measured at concurrency 1")
    return [_caption(r, b) + f" {precision}, {bench_report.THROUGHPUT_LOAD}, concurrency 1:", "", *table]


def tuning(r: dict, b: Block) -> list[str]:
    """The first precision's thread-budget sweep (`tune`, bench_report.tuning_table)."""
    precision = r["config"]["precisions"][0]
    sweep = ((r.get("thread_budgets") or {}).get(precision) or {}).get("tuning")
    if not sweep:
        raise _NotInRun(f"recorded no tune sweep for its {precision} repository")
    return [_caption(r, b) + f" The {precision} repository, {sweep['load']}, N={sweep['candidates_per_request']}, best over "
            f"concurrency {'/'.join(map(str, sweep['concurrency']))}; instances x threads per model (spin: ONNX Runtime's "
            "threads spinning):", "", *bench_report.tuning_table(sweep)]


def headline_split(r: dict, b: Block) -> list[str]:
    """The split ensemble against the unsplit graph (and PyTorch eager) on the run's mixed load: unique requests."""
    precision = r["config"]["precisions"][0]
    s = next((s for s in speedups(r) if s["precision"] == precision and s["load"].startswith("mixed")), None)
    if s is None or s[FUSED] is None:
        raise _NotInRun(f"has no {precision} mixed load with both stca and stca_fused measured")
    cells = {c["model"]: c for c in r["cells"] if c["precision"] == precision and c["load"] == s["load"]}
    req = lambda model: best(cells[model])["throughput"]  # noqa: E731
    eager = f" and {req(TORCH):.1f} for PyTorch eager `{TORCH}` ({s[TORCH]:.2f}x)" if s[TORCH] else ""
    return [f"**Unique requests, split against unsplit.** {_model(r, capital=True)}, {precision}, KuaiRand-length histories (mean L = "
            f"{s['history']:.0f}), N = {s['candidates']}, best over concurrency {'/'.join(map(str, r['config']['concurrency']))}: the "
            f"split ensemble `{ENSEMBLE}` served {req(ENSEMBLE):.1f} req/s against {req(FUSED):.1f} for the unsplit graph `{FUSED}` "
            f"(**{s[FUSED]:.2f}x**){eager}. {_where(r, b)}"]


# the repeated-users variants (compiler.measure.bench_repeated.VARIANTS) as a sentence names them
WAYS = {"row cache, one process": "the row cache in one process (the default build)", "row cache": "the row cache in the encoder's process",
        "row cache in the scorer": "in the scorer's process", "no cache": "without the row cache",
        "response cache": "with only Triton's response cache"}


def headline_repeated(r: dict, b: Block) -> list[str]:
    """The history row cache on returning users: stca with the cache (in one process, the default build, where the run
    has that variant) against stca_fused, and each other way of serving against stca_fused."""
    rep = _repeated(r)
    variants, t = rep["variants"], rep["traffic"]
    top = {name: max(row["throughput"] for row in v["rows"]) for name, v in variants.items()}
    lead = "row cache, one process" if "row cache, one process" in variants else "row cache"
    hits = [hit_rate(row["cache"]) for v in variants.values() if v["model"] == ENSEMBLE for row in v["rows"] if row.get("cache")]
    others = ", ".join(f"{WAYS.get(name, name)} {top[name] / top['fused']:.2f}x" for name in variants if name not in (lead, "fused"))
    return [f"**Returning users, the history row cache.** {_model(r, capital=True)}, {r['config']['precisions'][0]}, {t['users']} "
            f"fresh users x {t['visits']} visits per concurrency level (mean L = {rep['mean_history']:.0f}), N = {rep['candidates']}: "
            f"`{ENSEMBLE}` with {WAYS[lead]} served {top[lead]:.1f} req/s against {top['fused']:.1f} for `{FUSED}`: "
            f"**{top[lead] / top['fused']:.2f}x**; the other ways over `{FUSED}`: {others}. Row-key hit rate "
            f"{min(hits):.2f}-{max(hits):.2f}{_distinct_share(variants[lead])}. {_where(r, b)}"]


def _distinct_share(variant: dict) -> str:
    """', the scorer ...' where the variant sent each distinct history row once and the run kept its history rows."""
    rows = [row for row in variant["rows"] if row.get("cache") and "history_rows" in row]
    if not variant.get("multiplicity") or not rows:
        return ""
    return f"; the scorer took each distinct row once, {distinct_share(rows):.2f} of the history rows"


def headline_int8(r: dict, b: Block) -> list[str]:
    """int8 against fp32: stca on the mixed load, and the range over the run's loads."""
    rows = [row for row in bench_report.precision_ratios(r) if ENSEMBLE in row["models"]]
    if not rows:
        raise _NotInRun("measured no stca in both fp32 and int8")
    mixed = next((row for row in rows if row["load"].startswith("mixed")), rows[-1])
    fp32, low = mixed["models"][ENSEMBLE]
    span = [q / p for p, q in (row["models"][ENSEMBLE] for row in rows)]
    return [f"**int8 against fp32.** {_model(r, capital=True)}, `{ENSEMBLE}`, {mixed['load']}: {fp32:.1f} req/s in fp32, {low:.1f} in int8 "
            f"(**{low / fp32:.2f}x**); {min(span):.2f}-{max(span):.2f}x over the run's {len(rows)} loads. {_where(r, b)}"]


def headline_fidelity(r: dict, b: Block) -> list[str]:
    """Whether each build of the run passed its accuracy gate against the fp32 model, and what the gate is."""
    gates = r.get("gates") or {}
    if not gates:
        raise _NotInRun("recorded no accuracy gates")
    passed = [p for p, g in gates.items() if g["passed"]]
    said = ("every build passed its accuracy gate against the PyTorch fp32 model before it was served" if len(passed) == len(gates)
            else "not every build passed its accuracy gate against the PyTorch fp32 model: "
            + "; ".join(f"{p} missed ({'; '.join(g['failures'][:2])})" for p, g in gates.items() if not g["passed"]))
    precision_doc = b.link(Path("docs") / "precision.md")
    return [f"**Fidelity.** In this run {said} (" + "; ".join(f"{p}: {_gate(p)}" for p in gates) + "). The errors per "
            f"history length are in [{precision_doc}]({precision_doc}), from the builds' own reports (`build` writes them in "
            f"report.md), not from a benchmark run. {_where(r, b)}"]


def replicas(r: dict, b: Block | None = None) -> list[str]:
    """benchmarks/replicas.py: one server against two replicas behind the proxy, by routing, on one cache budget."""
    lines = [f"{r['machine']}; onnxruntime {r['versions'].get('onnxruntime', '?')}; {r['requests']} requests from "
             f"{r['users']} users ({r['traffic']['visits']} visits each, mean history {r['mean_history']:.0f} rows, "
             f"N={r['candidates']}), concurrency {r['concurrency']}; working set {r['working_set_rows']:,} rows of "
             f"{r['entry_bytes']:,} B; total row cache budget {r['budget_bytes'] / 2**20:.1f} MiB ({r['budget_fraction']:g} of "
             "the working set), split evenly over the processes that hold a cache.",
             "",
             "| way | hit rate | simulated | req/s | p50 ms | p99 ms | max ms | users per replica |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for way, row in r["ways"].items():
        sim = r.get("simulated", {}).get(way)
        lines.append(f"| {way} | {row['hit_rate']:.3f} | {'-' if sim is None else f'{sim:.3f}'} | {row['throughput']:.1f} | "
                     f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.0f} | "
                     f"{'/'.join(map(str, row.get('users_per_replica', []))) or '-'} |")
    if "working_set_over_replicas" in r:
        lines += ["", f"Simulated: benchmarks/cache_sim.py's replay of the same requests through the served cache, one at a "
                      f"time (one cache for one server; two caches spread at random for round-robin, and with nginx's own "
                      f"placement of the users for affinity). With affinity the two replicas' working sets add up to "
                      f"{r['working_set_over_replicas']:.2f}x the traffic's: rows of items many users share are needed on both."]
        mine = r.get("user_keyed")
        if mine:
            lines[-1] += (f" Had each row been keyed by its user as well (no row shared between users; simulated, the same "
                          f"number of rows), the working set would be {mine['working_set_rows'] / r['working_set_rows']:.2f}x "
                          f"as large, and one server would hit {mine['one server']:.3f}, two replicas with affinity "
                          f"{mine['2 replicas, affinity']:.3f} (with rows keyed by item, as served: "
                          f"{r['simulated']['one server']:.3f} and {r['simulated']['2 replicas, affinity']:.3f}).")
    killed = [row for row in r["ways"].values() if "survivor_hit_rate_after_kill" in row]
    if killed:
        lines += ["", f"With replica 0 killed halfway, all {r['requests']} requests were answered without a client retry; "
                      f"the survivor's hit rate after the kill was {killed[0]['survivor_hit_rate_after_kill']:.3f} (it took "
                      "replica 0's users, whose rows it had not cached)."]
        lost = killed[0].get("failover")
        if lost:
            timeline = "latency_timeline.png" if b is None else b.link(RESULTS / b.run / "latency_timeline.png")
            resent = lost["resent"]
            lines[-1] += (f" What the kill cost: {lost['in_flight_at_kill']} request(s) in flight at it (on either replica), the "
                          f"longest answered in {lost['longest_in_flight_ms']:.0f} ms; the last of them was answered "
                          f"**{lost['recovery_s']:.2f} s** after the kill (the recovery time: the survivor answered every later "
                          f"request). nginx re-sent to the survivor {resent['answer']} request(s) the dead replica held, "
                          f"{resent['send']} sent on a dead kept-alive connection and {resent['connect']} its closed port refused. "
                          f"Latency p50/p99 {lost['p50_ms_before']:.1f}/{lost['p99_ms_before']:.1f} ms "
                          f"before the kill, {lost['p50_ms_after']:.1f}/{lost['p99_ms_after']:.1f} ms after it, with one "
                          f"replica's cores serving every user ([every request's latency]({timeline})).")
    return lines


KINDS: dict[str, Callable[[dict, Block], list[str]]] = {
    "summary": summary, "memory": memory, "int8": int8, "latency": latency, "tuning": tuning, "headline-split": headline_split,
    "headline-repeated": headline_repeated, "headline-int8": headline_int8, "headline-fidelity": headline_fidelity,
    "replicas": replicas,
}
# Runs that a benchmark script of their own records (results.json's "suite"): results.md's title and table.
SCRIPT_RUNS: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "replicas": ("Two replicas: routing and the row cache", replicas),
}


def own_markdown(results: dict) -> str:
    """results.md of a SCRIPT_RUNS run: its title, the command that recorded it, its table."""
    title, table = SCRIPT_RUNS[results["suite"]]
    return f"# {title}\n\nReproduce: `{results['command']}`\n\n" + "\n".join(table(results)) + "\n"


def _repeated(r: dict) -> dict:
    if not r.get("repeated_users"):
        raise _NotInRun("did not measure the repeated_users suite")
    return r["repeated_users"]


def _model(r: dict, capital: bool = False) -> str:
    c, config = r.get("model_config"), r["config"]
    if not c:
        return f"{'Y' if capital else 'y'}our model ({Path(r['model']['path']).name})"
    name = ("The" if capital else "the") + (f" `{config['preset']}` preset" if config.get("preset") else
            f" model of {config['checkpoint']}" if config.get("checkpoint") else " demo model")
    return f"{name} (D={c['n_heads'] * c['head_dim']})"


def _where(r: dict, b: Block) -> str:
    return f"{bench_report.machine_text(r)}, {r['created'][:10]}; [`{b.run}`]({b.run_link})."


def _caption(r: dict, b: Block) -> str:
    return f"[`{b.run}`]({b.run_link}): {_model(r)}, recorded {r['created'][:10]} on {bench_report.machine_text(r)}."


def _gate(precision: str) -> str:
    t = THRESHOLDS.get(precision)
    if t is None:
        return "its gate"
    return ", ".join(part for part in (
        f"max abs error <= {t.max_abs_error:.0e}".replace("e-0", "e-") if t.max_abs_error is not None else "",
        f"mean Kendall tau >= {t.kendall_tau:g}" if t.kendall_tau is not None else "",
        f"|AUC delta| <= {t.auc_delta:g}" if t.auc_delta is not None else "") if part)
