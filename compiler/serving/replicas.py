"""Several servers of one repository behind one address: what `compiler serve --replicas R` runs.

    with Replicas(ReplicasConfig(repo, replicas=2, route="affinity")) as group:
        ScoringClient(group.proxy.cfg.http_url).score(inputs)      # one address; each user to one replica

Each replica is a tritonserver on its own copy of the repository (hard-linked; only the configs differ) that takes
its share of the machine: the cores split evenly (the server and its model processes pinned to them), the thread
budget the build would plan for that many cores (compiler.repository.budget.default_placements; a tuned budget was
measured for the whole machine, so it is not kept), and the history row cache's budget divided by R, so the R
replicas hold what one server would. The proxy (compiler.serving.proxy, nginx) routes by user; each replica is
supervised as `compiler serve` supervises one server (compiler.serving.supervisor), and the proxy is started again
if it dies.

On one machine this is how to measure what routing does to the row cache before scaling out (benchmarks/replicas.py);
across machines, the same routing is the ingress's job (docs/deploy/).
"""

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.repository import budget, manifest
from compiler.repository.reader import cache_holder, linked_copy, update_config
from compiler.serving import memory
from compiler.serving.proxy import Proxy, ProxyConfig
from compiler.serving.server import ServerConfig, Started, TritonServer, free_port
from compiler.serving.supervisor import Supervisor, stop_on_signals


@dataclass(frozen=True)
class ReplicasConfig:
    repo: Path
    replicas: int = 2
    route: str = "affinity"  # compiler.serving.proxy.ROUTES
    host: str = "127.0.0.1"  # the proxy's address; the replicas listen on free ports of 127.0.0.1
    http_port: int = 8000  # 0: a port free when the proxy starts (chosen then: one chosen earlier may be taken meanwhile)
    grpc_port: int = 8001
    cores: tuple[int, ...] | None = None  # the cores to share out (default: those this process may run on)
    tritonserver: Path | None = None
    nginx: Path | None = None

    def __post_init__(self):
        if self.replicas < 1:
            raise CompilerError(f"replicas: {self.replicas} must be at least 1")


def core_shares(cores: tuple[int, ...], replicas: int) -> list[tuple[int, ...]]:
    """`cores` split into `replicas` contiguous shares, as even as they divide (the first ones one larger)."""
    if replicas > len(cores):
        raise CompilerError(f"replicas: {replicas} replicas on {len(cores)} cores; each replica needs a core of its own")
    size, extra = divmod(len(cores), replicas)
    starts = [i * size + min(i, extra) for i in range(replicas + 1)]
    return [tuple(cores[starts[i]:starts[i + 1]]) for i in range(replicas)]


def replica_repository(repo: Path, copy: Path, cores: int, replicas: int) -> Path:
    """A hard-linked copy of `repo`'s models configured as one of `replicas` replicas on `cores` cores (module
    docstring)."""
    if manifest.read(repo).thread_budget is None:
        raise CompilerError(f"replicas: {repo} was built for a GPU target; on a GPU, run one server per GPU behind the "
                            "ingress (docs/deploy/)")
    linked_copy(repo, copy)
    holder = cache_holder(repo)
    budget.write_placements(copy, budget.default_placements(cores, cache_holder=holder))
    if holder is not None:
        def share(config):
            total = int(config.parameters["history_cache_bytes"].string_value)
            config.parameters["history_cache_bytes"].string_value = str(total // replicas)
        update_config(copy, holder, share)
    return copy


class Replicas(Started):
    """R replica servers and the proxy in front of them. Use as a context manager, or start()/wait_ready()/stop()."""

    def __init__(self, cfg: ReplicasConfig):
        self.cfg = cfg
        self.servers: list[TritonServer] = []
        self.proxy: Proxy | None = None
        self._workdir: Path | None = None

    def start(self) -> None:
        """Start every replica on its copy of the repository and its cores."""
        cfg = self.cfg
        shares = core_shares(cfg.cores or tuple(sorted(os.sched_getaffinity(0))), cfg.replicas)
        self._workdir = Path(tempfile.mkdtemp(prefix="stca-replicas-"))
        for i, share in enumerate(shares):
            copy = replica_repository(cfg.repo, self._workdir / f"replica-{i}", len(share), cfg.replicas)
            server = TritonServer(ServerConfig.on_free_ports(copy, cpus=share, tritonserver=cfg.tritonserver))
            self.servers.append(server)
            server.start()
            log.info("replicas: replica %d on cores %s: http %s, metrics %s", i, ",".join(map(str, share)),
                     server.cfg.http_url, server.cfg.metrics_url)

    def wait_ready(self, stop: threading.Event | None = None) -> None:
        """Until every replica can score (or `stop` is set), then start the proxy in front of them."""
        for server in self.servers:
            server.wait_ready(stop=stop)
        if stop is None or not stop.is_set():
            cfg = self.cfg
            self.proxy = Proxy(ProxyConfig(replicas=tuple(s.cfg for s in self.servers), route=cfg.route, host=cfg.host,
                                           http_port=cfg.http_port or free_port(), grpc_port=cfg.grpc_port or free_port(),
                                           nginx=cfg.nginx))
            self.proxy.start()
            self.proxy.wait_ready()

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Heal until `stop` is set: each replica as its Supervisor does, and the proxy started again if it died."""
        supervisors = [Supervisor(server) for server in self.servers]
        while not stop.wait(interval_s):
            for supervisor in supervisors:
                supervisor.check()
            if self.proxy.process.poll() is not None:
                log.warning("replicas: nginx exited with code %s; starting it again:\n%s", self.proxy.process.returncode,
                            self.proxy.log_tail())
                self.proxy.stop()
                self.proxy.start()
                self.proxy.wait_ready()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for server in self.servers:
            server.stop()
        self.servers = []
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def serve_replicas_forever(cfg: ReplicasConfig, limit: memory.MemoryLimit | None = None) -> None:
    """`compiler serve --replicas R`: check the row caches' budget against `limit` (the R replicas share the build's),
    start the replicas and the proxy, print the address, heal what dies until Ctrl-C or SIGTERM, then stop cleanly."""
    memory.check_budgets(cfg.repo, limit or memory.memory_limit())
    with stop_on_signals() as stop:
        group = Replicas(cfg)
        try:
            group.start()
            group.wait_ready(stop)
            if not stop.is_set():
                log.info("serve: %d replicas behind nginx (%s): http %s  grpc %s  (Ctrl-C stops)", cfg.replicas, cfg.route,
                         group.proxy.cfg.http_url, group.proxy.cfg.grpc_url)
                group.run(stop)
        finally:
            group.stop()
        log.info("serve: stop requested; replicas and proxy stopped")
