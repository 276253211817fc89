"""TensorRT engines: the profile spec runs everywhere; building and running plans needs TensorRT and a GPU."""

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.core.errors import CompilerError
from compiler.repository.engines import Profile, gpu_info, resolve_target


def value(name, dims):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def test_profiles_parse_and_map_symbolic_dims_to_shapes():
    profile = Profile.parse("L=1:2000:10000,N=1:256:1024")
    assert profile.shapes(value("K_1", ["L", 64])) == ((1, 64), (2000, 64), (10000, 64))
    assert profile.shapes(value("candidate_features", ["N", 3])) == ((1, 3), (256, 3), (1024, 3))


@pytest.mark.parametrize("text", ["L=1:2000", "L=5:2:10", "L=a:b:c"])
def test_bad_profiles_are_refused(text):
    with pytest.raises(CompilerError, match="profile"):
        Profile.parse(text)


def test_a_dim_the_profile_does_not_give_is_named():
    with pytest.raises(CompilerError, match=r"dim\(s\) \['N'\]"):
        Profile.parse("L=1:2:3").shapes(value("x", ["N"]))


@pytest.mark.parametrize("trt, gpu, chosen", [(None, None, "python"), ("10.5.0", None, "python"),
                                              (None, {"name": "H200"}, "python"), ("10.5.0", {"name": "H200"}, "tensorrt")])
def test_auto_picks_tensorrt_only_with_both_tensorrt_and_a_gpu(monkeypatch, trt, gpu, chosen):
    from compiler.repository import engines

    monkeypatch.setattr(engines, "tensorrt_version", lambda: trt)
    monkeypatch.setattr(engines, "gpu_info", lambda: gpu)
    assert resolve_target("auto") == chosen
    assert resolve_target("onnxruntime") == "onnxruntime"  # an explicit target is never second-guessed


@pytest.fixture(scope="module")
def tensorrt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT not installed: engines build on GPU hosts only (docs/precision.md)")
    if gpu_info() is None:
        pytest.skip("no GPU visible: TensorRT engines need one")
    return trt


def test_plans_of_the_split_halves_match_onnx_runtime(tensorrt, tmp_path):
    from compiler.core.contract import REQUEST_INPUTS
    from compiler.passes.partition import split
    from compiler.repository.engines import EngineConfig, TrtGraph, build_plans
    from compiler.runtime.ort import OrtGraph, SplitRunner
    from compiler.stca.data import sample_requests
    from tests.models import stca

    model, whole = stca("tiny")
    parts = split(whole, REQUEST_INPUTS, model.cut_tensor_names())
    profiles = (Profile({"L": (1, 512, 2000), "N": (1, 64, 256)}),)
    plans = build_plans({"enc": parts.encoder, "sc": parts.scorer}, profiles, EngineConfig(timing_cache=tmp_path / "cache"))
    assert (tmp_path / "cache").stat().st_size > 0  # the timing cache persists for the next build
    on_gpu = SplitRunner(TrtGraph(plans.plans["enc"], outputs_on_device=True), TrtGraph(plans.plans["sc"]))
    reference = SplitRunner(OrtGraph(parts.encoder), OrtGraph(parts.scorer))
    for request in sample_requests(model.config, [1, 700, 2000], seed=0, n_candidates=64):
        np.testing.assert_allclose(on_gpu.score(request.inputs), reference.score(request.inputs), atol=1e-3)
