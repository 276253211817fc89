"""The memory a served repository needs, measured when it starts, against what the machine or container allows.

    check_budgets(repo, limit)                    # before the server starts: the row caches' budgets alone must fit
    report = measure(server, limit)               # after it is ready: each process at its peak, plus what is to come
    report.check()                                # CompilerError with the table where the total exceeds the limit

What a Python-backend instance (a process) holds: the interpreter with numpy and ONNX Runtime, each session's weights,
ONNX Runtime's arena, which grows to the largest request's activations and keeps them, and the instance's share of the
row cache, which fills with traffic, or, where the model's instances share one cache, the region they share, resident
in full from the start (SharedRegion). So `measure` sends the largest request the contract allows (the built maximum
history and candidates) to every instance at once, reads each process's own resident size and the shared memory its
model's processes map, counted once (/proc), and adds what the row caches may still grow by (their budgets less what
they hold, from /metrics, or less the shared region). That sum, with the server process's resident size, is the
repository's resident total: `compiler serve` prints it per model and refuses to go on
where it exceeds the limit (the container's cgroup memory limit, else the machine's memory, else --memory-limit).
A measurement rather than a formula because the arena's peak depends on ONNX Runtime's memory planning of each graph.
"""

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE
from compiler.repository.reader import read_config
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.server import StubProcess, TritonServer, resident_bytes, shared_once, stub_processes

CGROUP_LIMITS = ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1
NO_CGROUP_LIMIT = 1 << 60  # what cgroup v1 reports for "no limit" is near 2^63; anything this large is none


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    source: str  # where it was read: the cgroup file, /proc/meminfo, or the caller


def memory_limit(root: Path = Path("/")) -> MemoryLimit:
    """The container's memory limit (cgroup v2, then v1), else the machine's memory (MemTotal)."""
    for name in CGROUP_LIMITS:
        path = root / name
        if path.is_file():
            text = path.read_text().strip()
            if text != "max" and int(text) < NO_CGROUP_LIMIT:
                return MemoryLimit(int(text), f"/{name}")
    for line in (root / "proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return MemoryLimit(int(line.split()[1]) * 1024, "/proc/meminfo MemTotal")
    raise CompilerError(f"memory: no cgroup limit and no MemTotal under {root}")


def cache_budgets(repo: Path) -> dict[str, int]:
    """Each model's row cache budget over all its instances (history_cache_bytes in its config), where it has one."""
    budgets = {}
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        config = read_config(path)
        if "history_cache_bytes" in config.parameters and int(config.parameters["history_cache_bytes"].string_value) > 0:
            budgets[config.name] = int(config.parameters["history_cache_bytes"].string_value)
    return budgets


def check_budgets(repo: Path, limit: MemoryLimit) -> None:
    """Refuse, before anything starts, a repository whose row caches alone would not fit in `limit`."""
    budgets = cache_budgets(repo)
    if sum(budgets.values()) >= limit.bytes:
        listed = ", ".join(f"{m} {_mib(b)}" for m, b in budgets.items())
        raise CompilerError(f"serve: the row caches' budgets ({listed}) exceed the memory limit, {_mib(limit.bytes)} "
                            f"({limit.source}); rebuild with a smaller --history-cache-bytes or edit history_cache_bytes "
                            "in the config")


@dataclass(frozen=True)
class ModelMemory:
    model: str
    resident: tuple[int, ...]  # bytes of each instance's process after the largest request, less the shared memory
    shared: int  # the shared memory its processes map (a row cache they share), counted once
    cache_to_come: int  # bytes its row caches may still grow by, over all its instances

    @property
    def total(self) -> int:
        return sum(self.resident) + self.shared + self.cache_to_come


@dataclass(frozen=True)
class MemoryReport:
    models: tuple[ModelMemory, ...]
    server: int  # the tritonserver process's resident bytes
    limit: MemoryLimit
    largest: str  # the request sent, in words

    @property
    def total(self) -> int:
        return self.server + sum(m.total for m in self.models)

    def table(self) -> str:
        rows = ["| process | instances | resident each, MiB (after the largest request) | shared by them, MiB | "
                "row cache still to fill, MiB | MiB |",
                "|---|---:|---|---:|---:|---:|",
                f"| tritonserver | 1 | {self.server >> 20} | - | - | {self.server >> 20} |"]
        rows += [f"| {m.model} | {len(m.resident)} | {', '.join(str(r >> 20) for r in m.resident)} | {m.shared >> 20} | "
                 f"{m.cache_to_come >> 20} | {m.total >> 20} |" for m in self.models]
        rows.append(f"| total | | | | | {self.total >> 20} (limit {self.limit.bytes >> 20}: {self.limit.source}) |")
        return "\n".join(rows)

    def check(self) -> None:
        if self.total > self.limit.bytes:
            raise CompilerError(f"serve: the repository needs {_mib(self.total)} once its row caches fill, more than the "
                                f"memory limit {_mib(self.limit.bytes)} ({self.limit.source}); {self.largest}:\n{self.table()}\n"
                                "Rebuild with a smaller --history-cache-bytes, fewer --instances or a smaller --max-history.")


def measure(server: TritonServer, limit: MemoryLimit) -> MemoryReport:
    """Send the largest request the ensemble's contract allows to every instance at once, then read what each process
    holds and what the row caches may still take (module docstring)."""
    reader = ScoringClient(server.cfg.http_url, model=ENSEMBLE)
    contract = reader.contract
    reader.close()
    request = contract.generate(contract.sizes(contract.max_history or 1, contract.max_candidates), seed=0)
    copies, errors = max(Counter(server.stub_instances().values()).values(), default=1), []

    def send():
        try:
            client = ScoringClient(server.cfg.http_url, model=ENSEMBLE, retries=0)  # one per thread: it is not shared
            client.score(request)
            client.close()
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=send) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise CompilerError(f"serve: the largest request ({_describe(contract)}) failed: {errors[0]}")
    stubs = stub_processes(server.process.pid)
    budgets = cache_budgets(server.cfg.repo)
    models = []
    for model in sorted({s.model for s in stubs}):
        held = server_stats.history_cache_counters(server.cfg.metrics_url, model).get("bytes", 0.0) if model in budgets else 0
        models.append(model_memory(model, [s for s in stubs if s.model == model], budgets.get(model, 0), int(held)))
    largest = f"{copies} concurrent request(s) of {_describe(contract)}"
    return MemoryReport(tuple(models), resident_bytes(server.process.pid), limit, largest)


def model_memory(model: str, stubs: list[StubProcess], budget: int, held: int) -> ModelMemory:
    """One model's memory from its processes, its row cache budget and the bytes its cache holds. A model's instances
    share one cache where it has several (a SharedRegion, resident in full once populated, in their shared memory);
    one instance's cache is private, its rows in its process's own memory as they come (held). The shared memory
    also holds the Python backend's tensor pool, which is not the cache's."""
    shared = shared_once(stubs)
    cached = max(held, shared) if len(stubs) > 1 else held
    return ModelMemory(model, tuple(s.own_bytes for s in stubs), shared, max(0, budget - cached))


def _describe(contract) -> str:
    return f"{contract.describe(contract.history_dim, contract.max_history)}, {contract.describe(contract.candidate_dim, contract.max_candidates)}" \
        if contract.history_dim else contract.describe(contract.candidate_dim, contract.max_candidates)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
