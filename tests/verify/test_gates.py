"""Verification measures what it claims: it passes the real graphs and catches a wrong one."""

import numpy as np
import pytest

from compiler.core.contract import REQUEST_INPUTS
from compiler.core.precisions import least_precise
from compiler.load.subject import Source, StcaSubject
from compiler.passes.partition import split
from compiler.runtime.ort import OrtGraph, SplitRunner
from compiler.verify.gates import VerifyConfig, held_out, verify
from tests.models import stca

QUICK = VerifyConfig(lengths=(1, 300), candidates=(3, 40), requests_per_case=2, auc_requests=6)


@pytest.fixture(scope="module")
def tiny():
    model, graph = stca("tiny")
    parts = split(graph, REQUEST_INPUTS)
    return StcaSubject(model, Source("seeded")), SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))


def test_the_split_graphs_pass_the_fp32_gate(tiny):
    model, runner = tiny
    result = verify(model, runner.score, "fp32", QUICK)
    assert result.passed, result.failures
    assert [(c.L, c.N) for c in result.cases] == [(1, 3), (1, 40), (300, 3), (300, 40)]
    assert result.max_abs_error <= 1e-4
    assert all(c.kendall_tau_mean == 1.0 and c.top10_overlap_mean == 1.0 for c in result.cases)


def test_a_small_error_fails_fp32_and_names_the_case(tiny):
    model, runner = tiny
    result = verify(model, lambda inputs: runner.score(inputs) + 3e-4, "fp32", QUICK)
    assert not result.passed
    assert result.failures[0] == "L=1 N=3: max abs error 3.00e-04 > 1e-04"


def test_reversed_rankings_fail_the_tau_gate(tiny):
    model, runner = tiny
    result = verify(model, lambda inputs: 1.0 - runner.score(inputs), "fp16", QUICK)
    assert any("Kendall tau" in f and "N=40" in f for f in result.failures)
    assert not any("N=3" in f for f in result.failures)  # tau is not gated on 3 candidates


def test_auc_delta_is_measured_on_labelled_requests(tiny):
    model, runner = tiny
    noisy = lambda inputs: runner.score(inputs) + np.random.default_rng(0).normal(0, 0.3, (len(inputs["candidate_item_ids"]), 3))  # noqa: E731
    result = verify(model, noisy, "int8", QUICK)
    assert set(result.auc) == {"finish", "skip", "like"}
    assert any(f.startswith("task ") and "AUC delta" in f for f in result.failures)


class CountedSubject(StcaSubject):
    """The real subject, counting the reference's answers."""

    answers = 0

    def reference(self, inputs):
        type(self).answers += 1
        return super().reference(inputs)


def test_held_out_answers_made_once_judge_every_graph_as_a_fresh_verification_would(tiny):
    """A build judges each of its attempts on one HeldOut: the fp32 model answers once per request, and every verdict
    is the one verify reaches making its own."""
    model, runner = tiny
    counted = CountedSubject(model.model, model.source)
    held = held_out(counted, QUICK)
    answered = CountedSubject.answers
    assert answered == 2 * 2 * QUICK.requests_per_case + QUICK.auc_requests  # (L, N) cases, then the labelled requests
    wrong = lambda inputs: runner.score(inputs) + 3e-4  # noqa: E731
    for graphs in (runner.score, wrong, runner.score):
        assert verify(counted, graphs, "int8", held=held) == verify(model, graphs, "int8", QUICK)
    assert CountedSubject.answers == answered
    assert verify(counted, wrong, "fp32", held=held).failures[0] == "L=1 N=3: max abs error 3.00e-04 > 1e-04"


def test_cases_are_clipped_to_the_built_limits():
    cfg = VerifyConfig(lengths=(1, 512, 10_000), candidates=(1, 256)).for_limits(max_history=2_000, max_candidates=64)
    assert cfg.lengths == (1, 512, 2_000) and cfg.candidates == (1, 64)


def test_a_mixed_build_is_held_to_its_least_precise_half():
    assert least_precise("fp32", "int8") == "int8" and least_precise("fp16", "fp32") == "fp16"
