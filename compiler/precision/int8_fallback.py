"""int8 that meets its gates by construction: which quantized layers cost the ranking most, measured one at a time.

    layers = rank_layers(parts, cfg, calibration, int8_form, subject)     # worst first
    attempt, kept = keep_float_until_the_gates_pass(attempt_with, lambda: layers)

Each weight GEMM of each int8 half is quantized alone (every other layer, and the other half, stay in float)
and the split graphs score a fixed, seeded set of sensitivity requests, the short tail (L = 1..64) included:
a layer's sensitivity is the mean Kendall-tau deficit (1 - tau) of its scores against the PyTorch fp32
model's, the int8 gate's own metric. keep_float_until_the_gates_pass keeps the worst in float, one more each round,
until verify passes by MARGIN or MAX_KEPT_FLOAT layers are kept (a build that passed on the way keeps that
pass; one that never passed fails as any missed gate does).
The sensitivity requests are not verify's (other seeds), so the gate still judges requests the choice never saw.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from compiler.core.log import Progress, log, stage
from compiler.core.metrics import kendall_tau
from compiler.core.names import ENCODER, SCORER, SHORT_NAMES
from compiler.passes.graph_index import GraphIndex
from compiler.passes.partition import Split
from compiler.precision.convert import PrecisionConfig, convert, weight_matmuls
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.verify.gates import Verification, tau_gated

MAX_KEPT_FLOAT = 8  # layers kept out of int8 before the build gives up: past that, int8 is not the precision to serve
# The fallback also runs while a gated tau passes by less than this: a pass by 0.003 (the demo model at L=7) can flip
# on a CPU whose integer kernels round differently (AVX2 without VNNI saturates int16 sums). The gate is unchanged.
MARGIN = 0.005
SENSITIVITY_LENGTHS = (1, 1, 7, 64, 512)  # the short tail fails first: one history item's V is the whole attention output
SENSITIVITY_CANDIDATES = 256
SENSITIVITY_SEED = 31_337


@dataclass(frozen=True)
class Layer:
    half: str  # "encoder" | "scorer"
    node: str
    tau_deficit: float  # mean 1 - tau against PyTorch fp32 with only this layer in int8
    weight_share: float  # its weight's share of the half's quantizable weight elements (its share of the GEMM work)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KeptLayer:
    """A layer served in float in an int8 half, and why (the round that kept it and the miss that made it)."""

    layer: Layer
    why: str

    def to_dict(self) -> dict:
        return {**self.layer.to_dict(), "why": self.why}


@dataclass(frozen=True)
class Attempt:
    """One conversion with some layers kept in float, and its verification; `made` is what the caller converted
    (build: the halves and the cut), carried through untouched."""

    made: object
    verification: Verification


def keep_float_until_the_gates_pass(attempt: Callable[[list[Layer]], Attempt], rank: Callable[[], list[Layer]],
                                    max_kept: int = MAX_KEPT_FLOAT) -> tuple[Attempt, tuple[KeptLayer, ...]]:
    """attempt([]) first; while its verification fails, or passes within MARGIN of a tau gate, keep one more layer
    in float (the most harmful of those left, in rank()'s order, asked for once and only when needed) and attempt
    again, up to `max_kept` layers.

    Returns the last attempt and the layers it keeps, except where an attempt passed and the later ones did not:
    then the last passing one (a pass is never traded for a miss)."""
    kept: list[KeptLayer] = []
    current = attempt([])
    passing = (current, ()) if current.verification.passed else None
    ranking: list[Layer] | None = None
    while len(kept) < max_kept:
        verification = current.verification
        thin = thin_cases(verification)
        if verification.passed and not thin:
            break
        ranking = rank() if ranking is None else ranking
        remaining = [layer for layer in ranking if layer not in [k.layer for k in kept]]
        if not remaining:
            break
        reason = verification.failures[0] if not verification.passed else f"passes, but within {MARGIN} of the gate: {thin[0]}"
        kept.append(KeptLayer(remaining[0], f"kept after round {len(kept) + 1} ({reason}): of the layers left, it costs "
                                            "the ranking most when quantized alone"))
        log.info("int8: %s; keeping %s %s in float (alone it costs 1 - tau %.4f, %.0f%% of the %s's int8 GEMM work) and "
                 "verifying again", reason, remaining[0].half, remaining[0].node, remaining[0].tau_deficit,
                 100 * remaining[0].weight_share, remaining[0].half)
        current = attempt([k.layer for k in kept])
        if current.verification.passed:
            passing = (current, tuple(kept))
    if passing is not None and not current.verification.passed:
        return passing
    return current, tuple(kept)


def rank_layers(parts: Split, cfg: PrecisionConfig, calibration, int8_form: str, subject, ranges: Path | None = None) -> list[Layer]:
    """Every quantizable layer of each int8 half, the most harmful first (see the module docstring); `ranges`: convert()'s,
    so each half is calibrated once, not once per layer."""
    contract = subject.contract
    lengths = [min(L, max(contract.max_history, 1)) for L in SENSITIVITY_LENGTHS]
    requests = [r.inputs for r in subject.requests(lengths, min(SENSITIVITY_CANDIDATES, contract.max_candidates), SENSITIVITY_SEED)]
    columns = lambda scores: np.asarray(scores).reshape(len(scores), -1)  # noqa: E731  (one column per task)
    expected = [columns(subject.reference(r)) for r in requests]
    graphs = {SHORT_NAMES[ENCODER]: (parts.encoder, cfg.encoder_precision), SHORT_NAMES[SCORER]: (parts.scorer, cfg.scorer_precision)}
    quantized = {half: weight_matmuls(graph) for half, (graph, precision) in graphs.items() if precision == "int8"}
    candidates = [(half, node) for half, nodes in quantized.items() for node in nodes]
    sizes = {half: _weight_sizes(graphs[half][0], nodes) for half, nodes in quantized.items()}
    layers = []
    with stage(f"int8 sensitivity: {len(candidates)} layers, one at a time") as s:
        progress = Progress("layer", len(candidates))
        for half, node in candidates:
            alone = replace(cfg, precision="fp32", encoder="int8" if half == "encoder" else "fp32",
                            scorer="int8" if half == "scorer" else "fp32")
            others = [n for n in quantized[half] if n != node]
            halves = convert(parts, alone, calibration, int8_form=int8_form, keep_float={half: others}, ranges=ranges)
            runner = SplitRunner(OrtGraph(halves.split.encoder), OrtGraph(halves.split.scorer))
            deficit = np.mean([1 - kendall_tau(e[:, t], got[:, t]) for e, r in zip(expected, requests)
                               for got in [columns(runner.score(r))] for t in range(e.shape[1])])
            layers.append(Layer(half, node, float(deficit), sizes[half][node] / sum(sizes[half].values())))
            progress.advance(note=f"{half} {node}: 1 - tau {deficit:.4f}")
        layers.sort(key=lambda layer: -layer.tau_deficit)
        s.summary = ", ".join(f"{layer.half} {layer.node} {layer.tau_deficit:.4f}" for layer in layers[:3]) + (" ..." if len(layers) > 3 else "")
    return layers


def thin_cases(verification: Verification) -> list[str]:
    """The gated cases whose mean tau is within MARGIN of the threshold, as "L=7 N=256: tau 0.9529"."""
    th = verification.thresholds
    return [f"L={c.L} N={c.N}: tau {c.kendall_tau_mean:.4f}" for c in verification.cases
            if tau_gated(th, c) and c.kendall_tau_mean < th.kendall_tau + MARGIN]


def keep_float(layers: list[Layer]) -> dict[str, list[str]]:
    """convert()'s keep_float for these layers."""
    kept: dict[str, list[str]] = {}
    for layer in layers:
        kept.setdefault(layer.half, []).append(layer.node)
    return kept


def _weight_sizes(graph, names: list[str]) -> dict[str, int]:
    """Elements of each named layer's weight (the MAC count per row it computes)."""
    index, sizes = GraphIndex(graph.graph), {}
    for node in graph.graph.node:
        if node.name in names:
            weight = next(i for i in node.input if index.is_weight(i))
            shape = index.shape(weight) or ()
            sizes[node.name] = int(np.prod([d for d in shape if isinstance(d, int)])) if shape else 1
    return sizes
