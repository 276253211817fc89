"""The deployment policy: what a repository is written for (target, device, cores, processes, the row cache's
holder), checked once when a build starts, before any stage runs.

Why one process on the python target: each Python-backend model is a stub process, and every tensor into or out
of one is copied through shared memory. Two stubs cost the split a second round trip and the cut's copies out of
the encoder and into the scorer (20 MB per request at L=10,000 for the demo model), which the unsplit graph never
pays; in one process the scorer reads the encoder's buffer.
The C++ backends (onnxruntime, tensorrt) hand tensors between ensemble steps in one process already; there the
halves stay two models.
"""

from dataclasses import dataclass

from compiler.core.errors import CompilerError
from compiler.core.names import BASELINES, ENCODER, FUSED, NAIVE, SCORER, SPLIT
from compiler.repository import budget
from compiler.runtime.row_cache import ADMISSIONS, DEFAULT_HISTORY_CACHE_BYTES

TARGETS = ("python", "onnxruntime", "tensorrt")  # and "auto", which build() resolves before emitting
CACHE_HOLDERS = {"encoder": ENCODER, "scorer": SCORER}  # --history-cache-at -> the model whose process holds the row cache
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class EmitConfig:
    target: str = "python"
    instances: int | None = None  # per composing model; None: 1 on a GPU, the thread budget's on a CPU
    device: str | None = None  # "cpu" or "gpu"; None: cpu for the python target, gpu for onnxruntime and tensorrt
    cpu_threads: int = 0  # the cores the served repository may use (compiler.repository.budget); 0: this machine's
    baselines: tuple[str, ...] = ()  # the names.BASELINES to emit beside the ensemble (the PyTorch ones on the python target)
    ort_trt_accelerator: bool = False  # onnxruntime target: let ORT hand subgraphs to TensorRT
    fused_attention: bool = True  # on a CPU: attention runs as ONNX Runtime's MultiHeadAttention (compiler.passes.fused_attention)
    response_cache: bool = False  # on the history encoder: a repeated history is encoded once
    history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES  # the history encoder's row cache (python target); 0: none
    history_cache_admission: str = "frequency"  # which computed rows a full cache keeps (compiler.runtime.row_cache.ADMISSIONS)
    history_cache_skip: bool = True  # a full cache that does not pay is skipped (compiler.runtime.row_cache.CacheWorth)
    split_processes: int | None = None  # python target: the halves in 1 process (stca_split) or 2; None: 1 there (2 where
    # response_cache or history_cache_at names a model of two), 2 on the other targets
    history_cache_at: str | None = None  # two processes: the one holding the row cache, the history encoder's (None) or the
    # scorer's, where only the row keys cross between the ensemble's steps instead of the cut tensors
    queue_limit: int = 0  # requests each step of the ensemble keeps waiting beyond those its instances run; more are
    # refused at once (writer.bound_queue); 0: no limit, the default, as the bound's dispatch costs throughput on a small machine
    warmup_history: int = 2_000
    warmup_candidates: int = 128

    def __post_init__(self):
        if self.target not in (*TARGETS, "auto"):
            raise CompilerError(f"target: {self.target!r} is not one of {(*TARGETS, 'auto')}")
        if self.instances is not None and self.instances < 1:
            raise CompilerError(f"instances: {self.instances} must be at least 1")
        if self.history_cache_at not in (None, *CACHE_HOLDERS):
            raise CompilerError(f"history cache at: {self.history_cache_at!r} is not one of {tuple(CACHE_HOLDERS)}")
        if self.split_processes not in (None, 1, 2):
            raise CompilerError(f"split processes: {self.split_processes} is not 1 or 2")
        if self.split_processes == 1 and self.target in ("onnxruntime", "tensorrt"):
            raise CompilerError(f"split processes 1: the {self.target} backend already hands the cut between the halves in one "
                                "process; --split-processes applies to the python target")
        if self.split_processes == 1 and self.history_cache_at is not None:
            raise CompilerError("history cache at: with the halves in one process, that process holds the row cache "
                                "(--history-cache-at needs --split-processes 2)")
        if self.split_processes == 1 and self.response_cache:
            raise CompilerError("response cache: it caches the history encoder's answers, which needs the encoder as its own "
                                "model (--split-processes 2)")
        unknown = [name for name in self.baselines if name not in BASELINES]
        if unknown:
            raise CompilerError(f"baselines: {', '.join(unknown)} not among {', '.join(BASELINES)}")
        if NAIVE in self.baselines and FUSED not in self.baselines:
            raise CompilerError(f"baselines: {NAIVE} scores each candidate through {FUSED}; emit both")
        if self.history_cache_admission not in ADMISSIONS:
            raise CompilerError(f"history cache admission: {self.history_cache_admission!r} is not one of {ADMISSIONS}")
        if self.history_cache_bytes < 0:
            raise CompilerError(f"history cache bytes: {self.history_cache_bytes} must be at least 0 (0 turns the cache off)")
        if self.queue_limit < 0:
            raise CompilerError(f"queue limit: {self.queue_limit} must be at least 0 (0: no limit)")
        if self.cpu_threads < 0:
            raise CompilerError(f"cpu threads: {self.cpu_threads} must be at least 1 (or 0: this machine's)")
        if self.device is not None and self.device not in DEVICES:
            raise CompilerError(f"device: {self.device!r} is not one of {DEVICES}")
        if self.device == "cpu" and self.target == "tensorrt":
            raise CompilerError("device cpu: TensorRT plans run on a GPU (use --target python or onnxruntime)")
        if self.device == "gpu" and self.target == "python":
            raise CompilerError("device gpu: the python target runs ONNX Runtime on the CPU (use --target onnxruntime or tensorrt)")



@dataclass(frozen=True)
class Deployment:
    """What a repository is written for: the user's EmitConfig with the target, device and cores resolved
    (the user's config is never rewritten)."""

    options: EmitConfig
    target: str  # one of TARGETS
    device: str  # cpu | gpu
    cpu_threads: int  # the cores the CPU thread budget shares
    tensorrt_profiles: int = 1  # optimization profiles in each row_graphs; every instance may use any of them

    @property
    def split_processes(self) -> int:
        """1: the halves in one Python-backend model (stca_split); 2: an encoder and a scorer model."""
        two = self.target != "python" or self.options.response_cache or self.options.history_cache_at is not None
        return self.options.split_processes or (2 if two else 1)

    @property
    def cut_bytes_cost(self) -> bool:
        """Whether the cut's bytes cost serving time: copied out of one stub process into another (the python target's
        two processes) or read from GPU memory; not where one CPU process hands the scorer the encoder's buffer."""
        return self.device == "gpu" or (self.target == "python" and self.split_processes == 2)

    @property
    def fuses_attention(self) -> bool:
        """Whether the graphs run attention fused: ONNX Runtime's contrib kernel, on the CPU only (TensorRT's parser does
        not take it; the GPU keeps the exported form its engines and ONNX Runtime's CUDA fusions were measured on)."""
        return self.options.fused_attention and self.device == "cpu"

    def placements(self, cache_holder: str | None = None) -> dict[str, budget.Placement]:
        """Instances and threads per model on a CPU (compiler.repository.budget.default_placements for the resolved cores); `cache_holder`: the
        model whose process holds the history row cache (see cache_holder), if any."""
        return budget.default_placements(self.cpu_threads, self.options.instances, cache_holder)

    def serves_row_cache(self, row_graphs) -> bool:
        """Whether a repository of these graphs serves the history encoder's row cache (`row_graphs`, or None: not row-local)."""
        return row_graphs is not None and self.target == "python" and self.options.history_cache_bytes > 0

    def cache_holder(self, row_graphs) -> str | None:
        """The model (SPLIT, ENCODER or SCORER) whose process holds the row cache, or None where none is served."""
        if not self.serves_row_cache(row_graphs):
            return None
        return SPLIT if self.split_processes == 1 else CACHE_HOLDERS[self.options.history_cache_at or "encoder"]


def resolve_deployment(cfg: EmitConfig, target: str, tensorrt_profiles: int = 1) -> Deployment:
    """cfg resolved for `target` (compiler.repository.engines.resolve_target's answer) on this machine."""
    if target not in TARGETS:
        raise CompilerError(f"emit: target {target!r} must be resolved first (compiler.repository.engines.resolve_target)")
    device = cfg.device or ("cpu" if target == "python" else "gpu")
    return Deployment(cfg, target, device, cfg.cpu_threads or budget.machine_threads(), tensorrt_profiles)
