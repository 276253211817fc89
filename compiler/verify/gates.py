"""Verify stage: run the compiled graphs (ONNX Runtime) against the fp32 model and gate on the result.

The reference is the subject's own fp32 model (compiler.load.subject: the PyTorch STCA module, or the user's ONNX
file / ExportedProgram). For every (L, N) case, several held-out requests: max and mean abs error of the
scores, per-request Kendall tau and top-10 overlap (per column of the first output, candidates ranked along
its candidate axis); on labelled requests at served lengths, where the subject has labels, the AUC delta per
task. Thresholds are per precision (docs/precision.md, Gates); a mixed build is held to the thresholds of its
least precise half. An output without a candidate axis cannot be ranked: its gates fall back to error
metrics (ERROR_ONLY_THRESHOLDS), and the verification says so.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from compiler.core.log import Progress, stage
from compiler.core.metrics import auc, kendall_tau, top_k_overlap
from compiler.load.subject import Subject

TAU_MIN_CANDIDATES = 16  # with 3 candidates one swapped near-tie moves tau by 2/3; tau is gated from here


@dataclass(frozen=True)
class Thresholds:
    max_abs_error: float | None = None
    kendall_tau: float | None = None  # mean per-request tau in each (L, N) case with N >= TAU_MIN_CANDIDATES
    auc_delta: float | None = None  # |AUC(compiled) - AUC(PyTorch)| per task


THRESHOLDS = {
    "fp32": Thresholds(max_abs_error=1e-4),
    "fp16": Thresholds(kendall_tau=0.99),
    "int8": Thresholds(kendall_tau=0.95, auc_delta=0.002),
}
# Where the output has no candidate axis there is no ranking to compare: max abs error only, looser below fp32.
ERROR_ONLY_THRESHOLDS = {"fp32": Thresholds(max_abs_error=1e-4), "fp16": Thresholds(max_abs_error=1e-2),
                         "int8": Thresholds(max_abs_error=5e-2)}


@dataclass(frozen=True)
class VerifyConfig:
    lengths: tuple[int, ...] = (1, 7, 64, 512, 1_000, 4_000, 10_000)
    candidates: tuple[int, ...] = (1, 3, 256)
    requests_per_case: int = 3
    auc_requests: int = 48  # labelled requests at KuaiRand lengths, 128 candidates each
    seed: int = 20_251_106

    def for_limits(self, max_history: int, max_candidates: int) -> "VerifyConfig":
        """The same cases, each clipped to what the build serves."""
        lengths = tuple(sorted({min(L, max_history) for L in self.lengths}))
        candidates = tuple(sorted({min(N, max_candidates) for N in self.candidates}))
        return replace(self, lengths=lengths, candidates=candidates)


@dataclass(frozen=True)
class CaseResult:
    L: int
    N: int
    requests: int
    max_abs_error: float
    mean_abs_error: float
    kendall_tau_mean: float
    kendall_tau_min: float
    top10_overlap_mean: float
    auc_delta: float | None  # largest |AUC(compiled) - AUC(PyTorch)| over tasks on this case's labels (N >= 16)


@dataclass(frozen=True)
class Verification:
    precision: str  # the least precise half's precision: it picks the thresholds
    thresholds: Thresholds
    cases: tuple[CaseResult, ...]
    auc: dict = field(default_factory=dict)  # task -> {"reference", "compiled", "delta"}
    failures: tuple[str, ...] = ()
    note: str = ""  # how the gates were chosen, where not the usual way (an output with no candidate axis)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs_error(self) -> float:
        return max(c.max_abs_error for c in self.cases)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "passed": self.passed,
            "max_abs_error": self.max_abs_error,
            "thresholds": asdict(self.thresholds),
            "cases": [asdict(c) for c in self.cases],
            "auc": self.auc,
            "failures": list(self.failures),
            **({"note": self.note} if self.note else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Verification":
        return cls(d["precision"], Thresholds(**d["thresholds"]), tuple(CaseResult(**c) for c in d["cases"]), d["auc"],
                   tuple(d["failures"]), d.get("note", ""))


@dataclass(frozen=True)
class HeldOut:
    """verify's held-out requests, each with the fp32 model's first output: made once (held_out), judged against every
    graph a build tries. An int8 build verifies up to MAX_KEPT_FLOAT + 1 attempts (compiler.precision.int8_fallback),
    and the reference's answers were two thirds of each verification."""

    cases: tuple[tuple[int, int, tuple], ...]  # (L, N, ((request, reference output), ...)) per case
    labelled: tuple  # ((request, reference output), ...): labelled requests at served lengths, for the AUC gate


def held_out(subject: Subject, cfg: VerifyConfig = VerifyConfig()) -> HeldOut:
    contract = subject.contract
    cfg = cfg.for_limits(max(contract.max_history, 1), contract.max_candidates)
    answered = lambda requests: tuple((r, subject.reference(r.inputs)) for r in requests)  # noqa: E731
    cases = []
    with stage("verify: the fp32 model on held-out requests") as s:
        progress = Progress("case", len(cfg.lengths) * len(cfg.candidates))
        for i, L in enumerate(cfg.lengths):
            for j, N in enumerate(cfg.candidates):
                cases.append((L, N, answered(subject.requests([L] * cfg.requests_per_case, N, cfg.seed + 1_000 * i + j))))
                progress.advance(note=f"L={L} N={N}")
        ranked = cfg.auc_requests and contract.output_candidate_axis is not None
        labelled = answered(subject.labelled_requests(cfg.auc_requests, cfg.seed)) if ranked else ()
        s.summary = f"{sum(len(c[2]) for c in cases)} requests in {len(cases)} cases, {len(labelled)} labelled"
    return HeldOut(tuple(cases), labelled)


def verify(subject: Subject, compiled: Callable[[dict], np.ndarray], precision: str, cfg: VerifyConfig = VerifyConfig(),
           held: HeldOut | None = None) -> Verification:
    """Compare `compiled(inputs)` (the first output) with the subject's fp32 reference on held-out requests (`held`,
    where the caller made them already; else made here from `cfg`)."""
    held = held or held_out(subject, cfg)
    axis = subject.contract.output_candidate_axis
    thresholds, note = THRESHOLDS[precision], ""
    if axis is None:
        thresholds = ERROR_ONLY_THRESHOLDS[precision]
        note = f"output {subject.contract.outputs[0]!r} has no candidate axis: no ranking to compare, so the gates are error metrics only"
    rows = lambda x: _by_candidate(x, axis)  # noqa: E731
    cases = []
    with stage(f"verify: {precision} graphs against the fp32 model") as s:
        progress = Progress("case", len(held.cases))
        for L, N, answered in held.cases:
            pairs = [(rows(reference), rows(compiled(r.inputs))) for r, reference in answered]
            requests = [r for r, _ in answered]
            labels = np.concatenate([r.labels for r in requests]) if all(r.labels is not None for r in requests) else None
            cases.append(_case(L, N, pairs, labels))
            progress.advance(note=f"L={L} N={N} max abs {cases[-1].max_abs_error:.2e}")
        auc_table = _auc_deltas(subject.tasks, compiled, held.labelled) if held.labelled else {}
        failures = _failures(thresholds, cases, auc_table)
        s.summary = (
            f"max abs error {max(x.max_abs_error for x in cases):.2e} over {len(cases)} cases; "
            + ("PASSED" if not failures else f"FAILED: {failures[0]}") + (f" ({note})" if note else "")
        )
    return Verification(precision, thresholds, tuple(cases), auc_table, tuple(failures), note)


def _by_candidate(x: np.ndarray, axis: int | None) -> np.ndarray:
    """An output as (candidates, columns); one row where it has no candidate axis."""
    x = np.asarray(x, dtype=np.float64)
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)



def _case(L: int, N: int, pairs: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray | None) -> CaseResult:
    errors = np.concatenate([np.abs(ref - out).ravel() for ref, out in pairs])
    taus = [kendall_tau(ref[:, t], out[:, t]) for ref, out in pairs for t in range(ref.shape[1])]
    overlaps = [top_k_overlap(ref[:, t], out[:, t], 10) for ref, out in pairs for t in range(ref.shape[1])]
    ref, out = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    deltas = [] if labels is None else [abs(auc(labels[:, t], out[:, t]) - auc(labels[:, t], ref[:, t])) for t in range(ref.shape[1])]
    deltas = [d for d in deltas if not np.isnan(d)]
    auc_delta = float(max(deltas)) if N >= TAU_MIN_CANDIDATES and deltas else None
    return CaseResult(
        L, N, len(pairs), float(errors.max()), float(errors.mean()), float(np.mean(taus)), float(np.min(taus)),
        float(np.mean(overlaps)), auc_delta,
    )


def _auc_deltas(tasks, compiled, answered) -> dict:
    ref = np.concatenate([reference for _, reference in answered])
    out = np.concatenate([compiled(r.inputs) for r, _ in answered])
    labels = np.concatenate([r.labels for r, _ in answered])
    table = {}
    for t, task in enumerate(tasks):
        a_ref, a_out = auc(labels[:, t], ref[:, t]), auc(labels[:, t], out[:, t])
        table[task] = {"reference": round(a_ref, 5), "compiled": round(a_out, 5), "delta": round(a_out - a_ref, 5)}
    return table


def tau_gated(th: Thresholds, case: CaseResult) -> bool:
    """Whether the Kendall-tau gate judges this case (it has a threshold, and enough candidates to rank)."""
    return th.kendall_tau is not None and case.N >= TAU_MIN_CANDIDATES


def _failures(th: Thresholds, cases: list[CaseResult], auc_table: dict) -> list[str]:
    failures = []
    for case in cases:
        where = f"L={case.L} N={case.N}"
        if th.max_abs_error is not None and case.max_abs_error > th.max_abs_error:
            failures.append(f"{where}: max abs error {case.max_abs_error:.2e} > {th.max_abs_error:.0e}")
        if tau_gated(th, case) and case.kendall_tau_mean < th.kendall_tau:
            failures.append(f"{where}: mean Kendall tau {case.kendall_tau_mean:.4f} < {th.kendall_tau}")
    if th.auc_delta is not None:
        for task, row in auc_table.items():
            if abs(row["delta"]) > th.auc_delta:
                failures.append(f"task {task}: AUC delta {row['delta']:+.4f} exceeds +/-{th.auc_delta}")
    return failures
