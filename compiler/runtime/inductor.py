"""The PyTorch model under torch.compile (inductor, CPU), compiled before it serves: the stca_inductor baseline.

    compiled = CompiledModel(load_model(checkpoint))   torch.compile(model, dynamic=True), warmed up on WARMUP_SHAPES
    compiled.score(request)                            like STCA.score; compiled.warmup says what the warm-up cost

What a PyTorch user tries first instead of this compiler. Its served model is compiler/runtime/triton_python/torch_model.py
with the parameter COMPILE_PARAMETER = INDUCTOR_MODE (stca_torch is the same file, eager).

Shapes. dynamic=True makes L and N symbolic, so it does not compile per length, but it is not one graph for every
request either (torch 2.13, measured with torch._logging's recompiles; tests/runtime/test_inductor.py):
  - inductor's CPU sums over more than 4,096 elements accumulate in chunks, for precision, so the attention's reductions
    over L guard L <= 4,096: a history longer than that compiles a second graph (10 s for the tiny model on 2 cores),
    which serves every longer one;
  - dynamo specialises a size of 0 or 1, so the first request with L = 1 or N = 1 compiles a graph of its own, in that
    request (6-12 s, tiny model, warm cache), and later ones reuse it. torch's backed_size_oblivious, which would not
    specialise them, scored N = 1 wrongly here, so it is not used.
The served model reports each graph a request compiles (COMPILED_GRAPHS_METRIC, and a warning in Triton's log).

Warm-up. Compiling happens on the first call, so CompiledModel calls the model on WARMUP_SHAPES before it returns, one
on each side of L = 4,096 (clipped to the model's limits): two graphs, and every later request with L and N from 2 up
reuses one of them. Its seconds, graphs and cache hits are `warmup`; the served model logs them and puts the seconds on
Triton's /metrics (COMPILE_SECONDS_METRIC), apart from any request's time.

Cache. Inductor keeps compiled graphs and kernels in TORCHINDUCTOR_CACHE_DIR; unless the caller set it (to another
directory than torch's default, which torch writes into the environment itself on import), cache_dir() is
stca-inductor-<uid> in the temporary directory, not the repository (a served repository stays byte-identical to its
manifest). Servers share it: its entries are keyed by the graph, the shapes' guards, the thread count, torch's version
and inductor's config, and written atomically under file locks (inductor's default cache is shared by every process of
a user the same way), so concurrent servers neither clash nor read each other's half-written files; a second start of
the same model finds its kernels there (the warm-up on 2 cores: tiny model 30-36 s cold, 6 s warm; medium 37-43 s
cold). torch 2.13 still puts its precompiled headers in its own default directory (torchinductor_<user>, fixed at
import). Nothing removes the cache (the tiny model's two graphs took 7 MB): delete the directory to start cold.

Processes. compile_threads = 1: inductor compiles in the calling process (g++ runs as a child and exits) and starts no
pool of compile workers, so nothing outlives a compile or the server.
"""

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch  # torch._inductor and torch._dynamo are imported where used: a second's import the repository writer,
# which reads this module's constants, should not pay

from compiler.core.contract import INPUT_NAMES
from compiler.stca.data import sample_requests
from compiler.stca.model import STCA

COMPILE_PARAMETER = "compile"  # the served model's config parameter: INDUCTOR_MODE, or absent for eager
INDUCTOR_MODE = "inductor"
COMPILE_SECONDS_METRIC = "stca_torch_compile_seconds"  # gauge per instance: the warm-up's seconds, compiling included
COMPILED_GRAPHS_METRIC = "stca_torch_compiled_graphs"  # gauge per instance: graphs compiled so far (warm-up's: 2)
WARMUP_SHAPES = ((2_000, 128), (10_000, 128))  # (L, N): benchmark loads, one each side of inductor's 4,096 (see above)


def cache_dir() -> str:
    """Where inductor caches: the caller's TORCHINDUCTOR_CACHE_DIR, else stca-inductor-<uid> in the temporary directory.
    Importing torch._inductor sets the variable to torch's default where it was unset, so that value counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return given
    return os.path.join(tempfile.gettempdir(), f"stca-inductor-{os.getuid()}")


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (every compiled model's together)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@dataclass(frozen=True)
class Warmup:
    seconds: float  # the warm-up calls, compiling included
    shapes: tuple[tuple[int, int], ...]  # (L, N) of each call
    graphs: int  # graphs the warm-up compiled (2: one each side of L = 4,096)
    cache_hits: int  # inductor's FX-graph cache: compiled graphs found in cache_dir(), and compiled anew
    cache_misses: int
    cache: str

    def text(self) -> str:
        shapes = ", ".join(f"L={L} N={N}" for L, N in self.shapes)
        return (f"torch.compile warm-up {self.seconds:.1f} s on {shapes}: {self.graphs} graph(s) compiled, inductor cache "
                f"{self.cache_hits} hit(s), {self.cache_misses} miss(es) in {self.cache}")


class CompiledModel:
    """`model` under torch.compile(dynamic=True) with inductor, warmed up on `shapes` (clipped to the model's limits)."""

    def __init__(self, model: STCA, shapes: tuple[tuple[int, int], ...] = WARMUP_SHAPES):
        import torch._inductor.config
        from torch._dynamo.utils import counters

        cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir()
        torch._inductor.config.compile_threads = 1
        self.compiled = torch.compile(model, dynamic=True)
        c = model.config
        shapes = tuple((max(2, min(L, c.max_history)), max(2, min(N, c.max_candidates))) for L, N in shapes)
        graphs, hits, misses = compiled_graphs(), counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
        start = time.perf_counter()
        for i, (L, N) in enumerate(shapes):
            self.score(next(sample_requests(c, [L], seed=i, n_candidates=N)).inputs)
        self.warmup = Warmup(time.perf_counter() - start, shapes, compiled_graphs() - graphs,
                             counters["inductor"]["fxgraph_cache_hit"] - hits, counters["inductor"]["fxgraph_cache_miss"] - misses, cache)

    @torch.no_grad()
    def score(self, request: dict) -> np.ndarray:
        """Scores (N, T) of one request given as numpy arrays keyed by input name, as STCA.score."""
        return self.compiled(*[torch.from_numpy(request[name]) for name in INPUT_NAMES]).numpy()
