"""The CPU thread budget of a served repository: how many instances each model runs and how many cores each uses.

On a CPU host every model of a repository shares the same cores. ONNX Runtime's own default (one intra-op
thread per core, each spinning between ops) suits one model alone and hurts an ensemble: the history
encoder's and the candidate scorer's Python-backend stubs then each spin a thread on every core and take
the time the other needs. Measured on 2 cores at L=10,000, N=128, one request at a time: encoder 53.9 ms +
scorer 40.8 ms with the default, 24-30 ms each with spinning off (docs/benchmarks.md has the breakdown).

`default_placements` is the budget a build writes without measuring: spinning off; the encoder and the scorer each run
several single-threaded (or few-threaded) instances over all the cores, so under concurrent load requests
interleave between the halves instead of waiting for one multi-threaded run; so does stca_split, which runs
both halves of a request in one process; a baseline (one model doing the whole request) gets every core in one
instance. On 2 cores that is what `tune` chose for both the demo
and the medium model (two 1-thread instances per half: 33.6 and 5.2 req/s on the mixed load, against 26.5
and 3.2 with one 1-thread instance per half, 29.3 and 4.6 with one 2-thread instance). `candidates` are the
budgets `compiler.measure.tune` measures to replace the plan with the best measured one on the serving machine.
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.errors import CompilerError
from compiler.core.names import ENCODER, FUSED, NAIVE, PYTORCH, SCORER, SPLIT, VALIDATOR
from compiler.repository.reader import update_config


@dataclass(frozen=True)
class Placement:
    """One model's share: `instances` copies, each with `threads` intra-op threads; spinning or not."""

    instances: int = 1
    threads: int = 1
    spinning: bool = False

    def __post_init__(self):
        if self.instances < 1 or self.threads < 1:
            raise CompilerError(f"thread budget: {self} needs at least one instance and one thread")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Placement":
        return cls(**d)

    def label(self) -> str:
        return f"{self.instances}x{self.threads}{' spin' if self.spinning else ''}"


@dataclass(frozen=True)
class ThreadBudget:
    """The CPU thread budget a repository's configs hold: every model's placement, and who chose it."""

    cpu_threads: int
    chosen_by: str  # "plan" (the build's unmeasured default) | "tune" (measured)
    placements: dict[str, Placement]
    tuning: dict | None = None  # tune: the candidates, what each measured, the load it measured them on

    def to_dict(self) -> dict:
        return {"cpu_threads": self.cpu_threads, "chosen_by": self.chosen_by,
                "placements": {model: p.to_dict() for model, p in sorted(self.placements.items())},
                **({"tuning": self.tuning} if self.tuning is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "ThreadBudget":
        return cls(d["cpu_threads"], d["chosen_by"], {m: Placement.from_dict(p) for m, p in d["placements"].items()}, d.get("tuning"))


def machine_threads() -> int:
    """The cores this process may run on (its affinity mask, which a container's cpuset narrows)."""
    return len(os.sched_getaffinity(0))


MAX_PLANNED_INSTANCES = 4  # each instance is a process holding its own copy of the graph's weights


def default_placements(cpu_threads: int, instances: int | None = None, cache_holder: str | None = None) -> dict[str, Placement]:
    """The unmeasured default for `cpu_threads` cores: see the module docstring. `instances` (the build's
    --instances) fixes the copies of each model, which split the cores between them. The model holding the history
    row cache (compiler/runtime/row_cache.py; `cache_holder`, SPLIT, ENCODER or SCORER) runs processes that share the
    one cache: stca_split the plan's instances (one instance would make every request queue for one process), the
    history encoder one (with its rows cached it is the lighter half), the scorer one on every core. In stca_split the plan's two single-threaded instances served 1.9x what
    one two-thread instance did on never-repeating traffic (demo model, 2 cores; benchmarks/row_cache_unique.py,
    docs/benchmarks.md)."""
    if cpu_threads < 1:
        raise CompilerError(f"thread budget: cpu_threads = {cpu_threads} must be at least 1")
    copies = instances or min(cpu_threads, MAX_PLANNED_INSTANCES)
    composing = Placement(copies, max(1, cpu_threads // copies))
    whole = Placement(instances or 1, max(1, cpu_threads // (instances or 1)))
    held = {ENCODER: Placement(instances or 1, composing.threads), SCORER: whole}.get(cache_holder)
    placements = {ENCODER: composing, SCORER: composing, SPLIT: composing, **({cache_holder: held} if held else {})}
    pytorch = {name: Placement(1, cpu_threads, spinning=True) for name in PYTORCH}  # eager and compiled alike
    return {**placements, FUSED: whole, **pytorch, NAIVE: Placement()}


def candidates(cpu_threads: int, cache_holder: str | None = None,
               placed: tuple[str, ...] = (ENCODER, SCORER, SPLIT, FUSED)) -> list[dict[str, Placement]]:
    """The budgets tune measures, one server start each: for the ensemble's two halves, the plan's, pipelined halves
    (one instance on half the cores each), shared cores (one instance on all of them each), and ONNX Runtime's
    default; for stca_split and the fused baseline (each runs a whole request), all cores in one instance, one
    instance per core, ONNX Runtime's default, and two-thread instances (stca_split's plan is one of these up to 8
    cores). The PyTorch and point-wise baselines keep the plan's. The model holding a row cache never spins; it runs
    its default (one instance, or stca_split's plan's instances), one instance on all cores and on half of them, and
    the plan's instances (a repeat, dropped, where the default is that), processes sharing the one cache, where
    concurrent requests run in parallel instead of queueing for the one process (served on never-repeating
    item ids, demo model, 2 cores: 2x1 served 1.9x what 1x2 did at concurrency 2 and 4; benchmarks/row_cache_unique.py),
    so which pays is the serving machine's and the traffic's to say. Tune's load repeats a few
    requests, so their rows are all cached after one pass, and there a spinning holder measured best; on repeated-user traffic, where the holder also computes the missing rows and the other step needs a core
    between, it measured worst (the medium model, the cache in the scorer: 20.4 req/s spinning, 30.0 not; see
    docs/benchmarks.md). `placed` are the models the repository serves: budgets that place them alike would be the
    same server measured twice (on 2 cores the two-thread instance is also all cores in one), so each is kept once."""
    t, half, base = cpu_threads, max(1, cpu_threads // 2), default_placements(cpu_threads, cache_holder=cache_holder)
    split = [base[SCORER], Placement(1, half), Placement(1, t), Placement(1, t, spinning=True)]
    copies = min(t, MAX_PLANNED_INSTANCES)
    held = [base[cache_holder], Placement(1, t), Placement(1, half), Placement(copies, max(1, t // copies))] if cache_holder else split
    encoder, scorer = (held if cache_holder == ENCODER else split), (held if cache_holder == SCORER else split)
    whole = [Placement(1, t), Placement(t, 1), Placement(1, t, spinning=True), Placement(max(1, t // 2), min(2, t))]
    one = held if cache_holder == SPLIT else whole  # the plan's stca_split budget is among the four up to 8 cores
    found = [{**base, ENCODER: e, SCORER: s, SPLIT: o, FUSED: f} for e, s, o, f in zip(encoder, scorer, one, whole)]
    distinct = {}
    for candidate in found:
        distinct.setdefault(tuple(candidate[m] for m in placed), candidate)
    return list(distinct.values())


def config_kind(model: str, backend: str) -> str:
    """How `model` reads its placement (configure's `kind`) in a repository whose composing models run on `backend`
    ("python" or "onnxruntime"): the point-wise baseline only calls another model, the PyTorch ones are Python."""
    return {NAIVE: "none", **dict.fromkeys(PYTORCH, "python")}.get(model, backend)


def configure(config: mc.ModelConfig, placement: Placement, kind: str) -> None:
    """Write a placement into a model config. `kind`: "python" (this package's Python-backend models read
    the intra_op_threads and allow_spinning parameters), "onnxruntime" (the C++ backend's own
    intra_op_thread_count; it has no spinning parameter, so spinning stays ONNX Runtime's default), or
    "none" (instances only: the point-wise model, which calls another)."""
    del config.instance_group[:]
    config.instance_group.add(count=placement.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    if kind == "python":
        config.parameters["intra_op_threads"].string_value = str(placement.threads)
        config.parameters["allow_spinning"].string_value = "1" if placement.spinning else "0"
    elif kind == "onnxruntime":
        config.parameters["intra_op_thread_count"].string_value = str(placement.threads)
        config.parameters["inter_op_thread_count"].string_value = "1"
    elif kind != "none":
        raise CompilerError(f"thread budget: unknown model kind {kind!r}")


def repository_backend(repo: Path) -> str:
    """How a built repository's composing models read their threads (config_kind's `backend`): this package's
    Python-backend models ("python"), or ONNX Runtime's C++ backend ("onnxruntime", whose repositories have the
    request validator)."""
    return "onnxruntime" if (Path(repo) / VALIDATOR).is_dir() else "python"


def write_placements(repo: Path, placements: dict[str, Placement]) -> None:
    """Every placed model's config in `repo` with its placement (update_config replaces the file, so a hard-linked
    copy's configs change alone)."""
    backend = repository_backend(repo)
    for model, placement in placements.items():
        if (Path(repo) / model / "config.pbtxt").is_file():
            update_config(repo, model, lambda config, p=placement, k=config_kind(model, backend): configure(config, p, k))
