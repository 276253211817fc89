"""Whether the scorer reads the cached history as a multiset, so that a request's repeated rows reach it once.

    multiplicity_input(scorer, rows, encoder, requests, runner)       -> (the cached output that takes log(count),
                                                                          the check's largest difference)
                                                                         or raises NotAMultiset

Attention over the history is a softmax-weighted sum over its rows. A row repeated c times weighs
c * exp(s) = exp(s + log c), so where the scorer reads the cached rows only through attention whose logits add one
float of each row (STCA's key bias, which the fused attention carries as one more key column), the scorer given
each distinct row once, that float raised by the log of its count, answers what it answers on every row. Rows
with equal row keys are equal (compiler.passes.row_locality), so the row cache can send each distinct key's rows
once: a history whose items repeat (the same item, action and age bucket) costs the scorer's attention its
distinct rows only.

Postcondition: on requests of several lengths, one left-padded, whose rows are repeated (a few times, and many
times) and reordered, the scorer on the distinct rows with the returned output raised by log(count) equals the
scorer on all the rows, within the tolerance of its outputs' dtype. The check is numerical: which of a graph's
values see the history axis as a set is a question about what attention does, not about shapes, and a scorer
that pools the rows (a mean, a count, a position) fails it on the first request. A scorer with no such output,
or that reads the history otherwise, raises NotAMultiset, and every row is sent as before.
"""

import numpy as np
import onnx

from compiler.core.errors import CompilerError
from compiler.passes.row_locality import deviation
from compiler.runtime.row_cache import RowSpec

# The repetition patterns each check request is sent with: (rows drawn from the first 1/`spread` of the history, so a
# larger spread repeats rows more often). Drawn at random, so their order is not the history's either.
SPREADS = (1, 16)


class NotAMultiset(CompilerError):
    """The scorer's scores change when a request's repeated history rows are sent once: every row must reach it."""


def multiplicity_input(scorer: onnx.ModelProto, rows: dict[str, RowSpec], encoder: onnx.ModelProto, requests: list[dict],
                       runner) -> tuple[str, float]:
    """Of the encoder's cached outputs (`rows`: name -> RowSpec, rows along axis 0), the one of one float per row whose
    rows, raised by log(count), let the scorer take each distinct row once (the module docstring's postcondition),
    and the largest difference its check saw; `runner(graph)` -> an object with run(feeds) -> outputs by name."""
    candidates = [name for name, spec in rows.items() if spec.row_shape == () and np.dtype(spec.dtype).kind == "f"]
    if not candidates:
        raise NotAMultiset("history multiset: no cached output has one float per row to carry a row's count")
    whole, score = runner(encoder), runner(scorer)
    cuts = [(request, whole.run(request)) for request in requests]
    reasons = []
    for name in candidates:
        try:
            return name, _check(score, cuts, tuple(rows), name)
        except NotAMultiset as e:
            reasons.append(str(e))
    raise NotAMultiset("; ".join(reasons))


def _check(score, cuts: list[tuple[dict, dict]], cached: tuple[str, ...], multiplicity: str) -> float:
    rng, worst = np.random.default_rng(7), 0.0
    for number, (request, cut) in enumerate(cuts, 1):
        length = len(cut[multiplicity])
        for spread in SPREADS:
            rows = rng.integers(0, max(1, length // spread), max(length, 3))  # at least one row repeated
            distinct, inverse = np.unique(rows, return_inverse=True)
            every = {name: cut[name][rows] for name in cached}
            once = {name: cut[name][distinct] for name in cached}
            bias = once[multiplicity]
            once[multiplicity] = bias + np.log(np.bincount(inverse)).astype(bias.dtype)
            try:
                expected, got = score.run({**request, **cut, **every}), score.run({**request, **cut, **once})
            except Exception as e:  # noqa: BLE001 (a scorer that reads L from elsewhere cannot take fewer rows)
                raise NotAMultiset(f"with {multiplicity} counting repeats, the scorer does not run on fewer rows: {e}") from e
            for output, value in expected.items():
                diff, within = deviation(got[output], value)
                worst = max(worst, diff)
                if not within:
                    raise NotAMultiset(f"with {multiplicity} raised by log(count), {output} differs by {diff:.3g} on check "
                                       f"request {number} ({len(rows)} rows, {len(distinct)} distinct)")
    return worst
