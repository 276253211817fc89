"""The int8 fallback loop, round by round, against a fake gate: each attempt's ranking quality is a number the test
sets, so which layers are kept, in what order, and which attempt is returned follow from the loop alone."""

import pytest

from compiler.precision.int8_fallback import MARGIN, Attempt, Layer, keep_float_until_the_gates_pass
from compiler.verify.gates import CaseResult, Thresholds, Verification

GATE = Thresholds(kendall_tau=0.95)
LAYERS = [Layer("scorer", "attn_q", 0.04, 0.2), Layer("encoder", "proj_1", 0.02, 0.5), Layer("scorer", "ffn", 0.01, 0.3)]


def verification(tau: float) -> Verification:
    case = CaseResult(L=7, N=256, requests=1, max_abs_error=0.1, mean_abs_error=0.01, kendall_tau_mean=tau,
                      kendall_tau_min=tau, top10_overlap_mean=1.0, auc_delta=None)
    failures = () if tau >= GATE.kendall_tau else (f"L=7 N=256: mean Kendall tau {tau:.4f} < {GATE.kendall_tau}",)
    return Verification("int8", GATE, (case,), {}, failures)


class FakeGate:
    """tau of an attempt = taus[number of layers kept]; records every attempt and every ranking asked for."""

    def __init__(self, *taus: float):
        self.taus, self.attempts, self.rankings = taus, [], 0

    def attempt(self, kept: list[Layer]) -> Attempt:
        self.attempts.append([layer.node for layer in kept])
        return Attempt(made=len(kept), verification=verification(self.taus[len(kept)]))

    def rank(self) -> list[Layer]:
        self.rankings += 1
        return list(LAYERS)


def test_a_build_that_passes_clear_of_the_margin_keeps_nothing_and_ranks_nothing():
    gate = FakeGate(0.99)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank)
    assert (attempt.made, kept, gate.attempts, gate.rankings) == (0, (), [[]], 0)


def test_a_miss_keeps_the_most_harmful_layers_one_a_round_until_it_passes():
    gate = FakeGate(0.90, 0.93, 0.97)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank)
    assert gate.attempts == [[], ["attn_q"], ["attn_q", "proj_1"]]
    assert attempt.verification.passed and attempt.made == 2
    assert [k.layer.node for k in kept] == ["attn_q", "proj_1"]
    assert kept[0].why.startswith("kept after round 1 (L=7 N=256: mean Kendall tau 0.9000 < 0.95)")
    assert kept[1].why.startswith("kept after round 2 (L=7 N=256: mean Kendall tau 0.9300")
    assert gate.rankings == 1  # ranked once, only once needed


def test_a_pass_within_the_margin_keeps_layers_until_it_is_clear_of_it():
    thin = GATE.kendall_tau + MARGIN / 2
    gate = FakeGate(thin, 0.99)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank)
    assert attempt.made == 1 and [k.layer.node for k in kept] == ["attn_q"]
    assert f"passes, but within {MARGIN} of the gate: L=7 N=256: tau {thin:.4f}" in kept[0].why


def test_a_pass_is_never_traded_for_a_later_miss():
    thin = GATE.kendall_tau + MARGIN / 2  # passes, thinly: the loop tries for more, and every later attempt misses
    gate = FakeGate(thin, 0.90, 0.91, 0.92)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank)
    assert len(gate.attempts) == 4  # it tried every layer of the ranking
    assert attempt.made == 0 and attempt.verification.passed and kept == ()


def test_a_build_that_never_passes_stops_at_the_limit_with_its_last_attempt():
    gate = FakeGate(0.5, 0.6, 0.7, 0.8)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank, max_kept=2)
    assert gate.attempts == [[], ["attn_q"], ["attn_q", "proj_1"]]
    assert attempt.made == 2 and not attempt.verification.passed and len(kept) == 2


def test_a_build_that_runs_out_of_layers_stops_with_all_of_them_kept():
    gate = FakeGate(0.5, 0.6, 0.7, 0.8)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank, max_kept=10)
    assert [k.layer.node for k in kept] == [layer.node for layer in LAYERS]
    assert attempt.made == len(LAYERS) and not attempt.verification.passed


@pytest.mark.parametrize("taus", [(0.5, 0.96), (0.99,)])
def test_the_attempt_returned_carries_what_the_caller_made(taus):
    gate = FakeGate(*taus)
    attempt, kept = keep_float_until_the_gates_pass(gate.attempt, gate.rank)
    assert attempt.made == len(kept)
