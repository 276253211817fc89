"""The CPU thread budget: what the build writes without measuring, and what tune measures."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.errors import CompilerError
from compiler.core.names import ENCODER, FUSED, INDUCTOR, NAIVE, SCORER, SPLIT, TORCH
from compiler.repository import budget


def test_the_plan_interleaves_instances_of_each_half_and_gives_a_baseline_every_core():
    assert budget.default_placements(2)[ENCODER] == budget.default_placements(2)[SCORER] == budget.Placement(instances=2, threads=1, spinning=False)
    plan = budget.default_placements(16)  # at most four instances (each holds the weights); their threads share the cores
    assert plan[ENCODER] == budget.Placement(4, 4) and plan[FUSED] == budget.Placement(1, 16)
    assert plan[TORCH].threads == 16 and plan[NAIVE].instances == 1
    assert plan[INDUCTOR] == plan[TORCH] == budget.Placement(1, 16, spinning=True)  # compiled or eager, the same budget
    assert budget.default_placements(1)[ENCODER] == budget.Placement(1, 1)  # never zero threads, on any machine


def test_both_halves_in_one_process_get_the_halves_plan_and_the_fused_graphs_candidates():
    for cores in (1, 2, 16):  # stca_split runs whole requests side by side, as each half's instances would
        assert budget.default_placements(cores)[SPLIT] == budget.default_placements(cores)[ENCODER]
    found = budget.candidates(2)
    assert [c[SPLIT] for c in found] == [c[FUSED] for c in found]  # it does the fused graph's work: the same four budgets
    assert budget.default_placements(2)[SPLIT] in [c[SPLIT] for c in found]  # the plan is measured too


def test_instances_given_share_their_models_cores():
    plan = budget.default_placements(8, instances=2)
    assert (plan[ENCODER].instances, plan[ENCODER].threads) == (2, 4)
    assert (plan[FUSED].instances, plan[FUSED].threads) == (2, 4)


def test_candidates_differ_and_each_keeps_the_baselines_plan():
    found = budget.candidates(2)
    assert len({(c[ENCODER], c[FUSED]) for c in found}) == len(found) == 4
    assert found[0][ENCODER] == budget.default_placements(2)[ENCODER]  # the plan is measured too
    assert all(c[m] == budget.default_placements(2)[m] for c in found for m in (TORCH, INDUCTOR))
    assert any(c[ENCODER].spinning for c in found) and any(not c[ENCODER].spinning for c in found)


def test_budgets_that_place_the_served_models_alike_are_measured_once():
    for cores, expected in ((2, 3), (16, 4)):  # on 2 cores two-thread instances are one all-core instance
        found = budget.candidates(cores, placed=(SPLIT, FUSED))
        assert len({(c[SPLIT], c[FUSED]) for c in found}) == len(found) == expected
    assert budget.default_placements(2)[SPLIT] in [c[SPLIT] for c in budget.candidates(2, placed=(SPLIT, FUSED))]  # kept, not dropped
    assert len(budget.candidates(2)) == 4  # the two halves' budgets differ in every one


@pytest.mark.parametrize("holder, other, instances", [(ENCODER, SCORER, 1), (SCORER, ENCODER, 1), (SPLIT, ENCODER, None)])
def test_the_model_holding_the_row_cache_keeps_its_planned_instances_or_one_where_tune_may_measure_more(holder, other, instances):
    """stca_split keeps the plan's instances, each with its cache's share; the encoder and the scorer with the cache
    run one instance, and tune measures the plan's instances beside it."""
    for cores in (1, 2, 16):
        plan = budget.default_placements(cores)[ENCODER]  # what an uncached half gets
        assert budget.default_placements(cores, cache_holder=holder)[holder].instances == (instances or plan.instances)
        assert budget.default_placements(cores, cache_holder=holder)[other] == budget.default_placements(cores)[other]
        found = budget.candidates(cores, cache_holder=holder)
        assert plan in [c[holder] for c in found] and any(c[holder].instances == 1 for c in found)
        assert all(not c[holder].spinning for c in found)
    assert len({(c[ENCODER], c[SCORER], c[FUSED]) for c in budget.candidates(2, cache_holder=holder)}) == 4
    assert budget.default_placements(8, instances=2, cache_holder=holder)[holder].instances == 2  # --instances is the user's word
    assert budget.default_placements(4, cache_holder=SCORER)[SCORER] == budget.Placement(1, 4)  # the scorer with the cache takes every core


def test_configure_writes_each_backends_own_parameters():
    python, ort = mc.ModelConfig(name="a"), mc.ModelConfig(name="b")
    python.instance_group.add(count=9, kind=mc.ModelInstanceGroup.KIND_GPU)  # replaced, not appended to
    budget.configure(python, budget.Placement(2, 3, spinning=True), "python")
    budget.configure(ort, budget.Placement(1, 4), "onnxruntime")
    assert [(g.count, g.kind) for g in python.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    assert (python.parameters["intra_op_threads"].string_value, python.parameters["allow_spinning"].string_value) == ("3", "1")
    assert ort.parameters["intra_op_thread_count"].string_value == "4" and "allow_spinning" not in ort.parameters


@pytest.mark.parametrize("make", [lambda: budget.default_placements(0), lambda: budget.Placement(0, 1), lambda: budget.Placement(1, 0),
                                  lambda: budget.configure(mc.ModelConfig(), budget.Placement(), "tensorflow")])
def test_impossible_budgets_are_refused(make):
    with pytest.raises(CompilerError):
        make()


@pytest.mark.parametrize("holder", [ENCODER, SCORER, SPLIT])
def test_the_model_holding_the_row_cache_never_spins(holder):
    assert not any(c[holder].spinning for c in budget.candidates(2, cache_holder=holder))


def test_the_pytorch_baselines_read_their_threads_as_python_models_in_any_repository():
    for backend in ("python", "onnxruntime"):
        assert budget.config_kind(TORCH, backend) == budget.config_kind(INDUCTOR, backend) == "python"
