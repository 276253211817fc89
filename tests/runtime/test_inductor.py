"""torch.compile's baseline in-process, as stca_inductor serves it (compiler/runtime/inductor.py): the eager model's
scores on requests of several L and N, no graph beyond the warm-up's two, the warm-up measured, the cache where it was told,
and no process left behind. One warm-up (two graphs) for the module: about 35 s for the tiny model on 2 cores, cold."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from compiler.runtime.inductor import WARMUP_SHAPES, CompiledModel, cache_dir, compiled_graphs
from compiler.stca.checkpoint import load_model
from compiler.stca.data import sample_requests

# Beside the warm-up's shapes: other lengths each side of 4,096 and candidate counts (N above the warm-up's too); none
# may compile another graph.
SHAPES = [(7, 3), (300, 32), (4_096, 128), (4_097, 64), (5_000, 500), (10_000, 1_024)]


def children() -> set[int]:
    """The pids of this process's children, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint, tmp_path_factory):
    """(the compiled model, the cache directory it was given, this process's children before it compiled)."""
    cache, before = tmp_path_factory.mktemp("inductor-cache"), children()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        yield CompiledModel(load_model(tiny_checkpoint)), cache, before


@pytest.mark.slow
def test_compiled_scores_equal_eager_on_several_lengths_without_recompiling(compiled, tiny_checkpoint):
    model, _, _ = compiled
    eager = load_model(tiny_checkpoint)
    graphs = compiled_graphs()
    for L, N in SHAPES:
        request = next(sample_requests(eager.config, [L], seed=L + N, n_candidates=N)).inputs
        scores = model.score(request)
        assert scores.shape == (N, len(eager.config.tasks))
        np.testing.assert_allclose(scores, eager.score(request), rtol=0, atol=1e-4, err_msg=f"L={L} N={N}")
    assert compiled_graphs() == graphs  # dynamic=True and the warm-up's two graphs: every L and N from 2 up


@pytest.mark.slow
def test_the_warmup_compiled_a_graph_for_each_shape_into_the_cache_it_was_given(compiled):
    model, cache, _ = compiled
    w = model.warmup
    assert w.shapes == WARMUP_SHAPES and w.graphs == 2  # one each side of inductor's L = 4,096
    assert w.seconds > 0 and w.cache == str(cache)
    assert w.cache_misses >= 1  # a fresh cache: compiled, not found
    assert any(p.is_file() for p in cache.rglob("*"))  # inductor wrote there
    assert f"{w.graphs} graph(s) compiled" in w.text() and str(cache) in w.text()


@pytest.mark.slow
def test_compiling_leaves_no_process_running(compiled):
    _, _, before = compiled
    assert children() - before == set()  # compile_threads = 1: no pool of compile workers


def test_the_cache_is_the_callers_or_ours_never_torchs_default(monkeypatch, tmp_path):
    ours = str(Path(tempfile.gettempdir()) / f"stca-inductor-{os.getuid()}")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert cache_dir() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._inductor sets where unset
    assert cache_dir() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert cache_dir() == str(tmp_path)
