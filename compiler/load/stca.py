"""Load stage for this package's STCA model: a checkpoint, the cached demo model, or a seeded preset, in the
attention form asked for, or in the one the cost model picks for the expected load (`attention="auto"`)."""

from dataclasses import dataclass
from pathlib import Path

from compiler.core.artifacts import sha256_file
from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.load.subject import AttentionChoice, Source, StcaSubject
from compiler.stca.checkpoint import WEIGHTS_FILE, load_model, seeded_model
from compiler.stca.costmodel import best_attention, crossover_candidates, served_cost, split_cost
from compiler.stca.model import ATTENTION_FORMS, preset, with_attention
from compiler.stca.train import demo_checkpoint


@dataclass(frozen=True)
class StcaSpec:
    checkpoint: Path | None = None  # None and no preset: the trained demo model
    preset: str | None = None  # an untrained, seeded model of a named size (shapes, costs, the cut)
    attention: str | None = None  # "kv" | "reordered" | "auto" (the cost model's pick); None keeps the checkpoint's
    max_history: int | None = None  # the served maximum L; None keeps the model config's
    max_candidates: int | None = None
    expected_history: int | None = None  # for attention "auto": typical L; None: the served maximum
    expected_candidates: int = 256  # for attention "auto": candidates per request in production
    expected_hit_rate: float = 0.0  # for attention "auto": the rows the history row cache serves (0: unique traffic)

    def __post_init__(self):
        if self.checkpoint is not None and self.preset is not None:
            raise CompilerError("build: give --checkpoint or --preset, not both")
        if not 0.0 <= self.expected_hit_rate <= 1.0:
            raise CompilerError(f"expected hit rate: {self.expected_hit_rate} is not a fraction of rows (0 to 1)")


def load_stca(spec: StcaSpec, target: str, cut_precision: str) -> StcaSubject:
    """The model as the spec says; `target` and `cut_precision` (the served repository's) price the cut where the
    attention form is left to the cost model."""
    overrides = {k: v for k, v in (("attention", spec.attention), ("max_history", spec.max_history),
                                   ("max_candidates", spec.max_candidates)) if v is not None and v != "auto"}
    if spec.preset is not None:
        model, source = seeded_model(preset(spec.preset, **overrides)), Source("seeded", preset=spec.preset)
    else:
        path, kind = (Path(spec.checkpoint), "checkpoint") if spec.checkpoint is not None else (demo_checkpoint(), "demo")
        model, source = load_model(path, **overrides), Source(kind, str(path), sha256_file(path / WEIGHTS_FILE))
    if spec.attention == "auto":
        choice = choose_attention(model.config, spec.expected_history or model.config.max_history, spec.expected_candidates,
                                  target, cut_precision, spec.expected_hit_rate)
        model, source = with_attention(model, choice.chosen), Source(source.kind, source.path, source.sha256, source.preset, choice)
    return StcaSubject(model, source)


def choose_attention(config, history: int, candidates: int, target: str, cut_precision: str,
                     hit_rate: float = 0.0) -> AttentionChoice:
    """The cost model's attention form at this load, the history row cache serving `hit_rate` of the rows, with the
    numbers it compared (logged)."""
    new_rows = 1.0 - hit_rate
    form = best_attention(config, history, candidates, target, cut_precision, new_rows)
    flops = {f: split_cost(config, history, candidates, f, new_rows=new_rows).flops for f in ATTENTION_FORMS}
    cost = {f: served_cost(config, history, candidates, f, target, cut_precision, new_rows) for f in ATTENTION_FORMS}
    log.info("attention auto: %s (at L=%d, N=%d, row cache hit rate %.2f, on target %s: kv %.3g FLOPs, reordered %.3g; "
             "with the %s cut priced: kv %.3g, reordered %.3g; kv wins above N=%.0f)", form, history, candidates, hit_rate,
             target, flops["kv"], flops["reordered"], cut_precision, cost["kv"], cost["reordered"],
             crossover_candidates(config, history, target, cut_precision, new_rows))
    return AttentionChoice(form, history, candidates, target, cut_precision, flops, cost, hit_rate)
