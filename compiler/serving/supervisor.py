"""Keep a served repository able to score: what `compiler serve` runs around the server.

    supervisor = Supervisor(server)          # a started TritonServer
    supervisor.run(stop)                     # checks every interval_s until stop is set

Two failures are healed without an operator. A Python-backend model whose process died (killed by the kernel's
OOM killer, a crash in a native kernel): Triton neither restarts it nor stops answering ready, so the supervisor
finds the missing process (TritonServer.dead_models, from /proc) and unloads and loads that model through Triton's
model-control API, which starts new processes for it and loads the ensemble again; the rest of the server keeps its
state (the other models' row caches among it). Measured on the demo model: a reload takes well under a second, where
a restart of the whole server takes seconds and empties every cache. The server process itself dying: it is started
again on the same ports. Requests in the gap fail with an error the client retries (ScoringClient), never with a
wrong score. A heal that fails (a load Triton refuses or whose connection it drops) is tried again after a back-off.
A model that keeps dying is not reloaded forever: after MAX_HEALS heals within HEAL_WINDOW_S, or MAX_FAILED_HEALS
failed heals in a row, the supervisor stops with the server's log, so a crash loop surfaces instead of hiding behind
restarts.
"""

import contextlib
import http.client
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.serving import memory
from compiler.serving.server import ServerConfig, TritonServer

MAX_HEALS, HEAL_WINDOW_S = 5, 600.0
MAX_FAILED_HEALS = 5  # in a row, each after twice the last wait: about 8 s of trying at the default interval


@dataclass(frozen=True)
class Heal:
    """One recovery: what was healed, how, when it was found, and how long until the server scored again."""

    what: str  # the models reloaded, or "tritonserver"
    how: str  # "reload" | "restart"
    found_at: float  # time.monotonic()
    seconds: float


@dataclass
class Supervisor:
    server: TritonServer
    interval_s: float = 0.5
    heals: list[Heal] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # each heal that failed: what, and why
    _unhealed: list[str] = field(default_factory=list)  # what the last failed heal left broken: tried again
    _failed_in_a_row: int = 0
    _retry_at: float = 0.0

    def check(self) -> Heal | None:
        """Heal what has failed since the last check; None where nothing had, or where the heal itself failed (a
        refused or dropped model-control request, a server not ready in time): that is tried again after a back-off
        (interval_s, doubling), and MAX_FAILED_HEALS failures in a row stop the supervisor with the server's log."""
        start = time.monotonic()
        if start < self._retry_at:
            return None
        broken = self._broken()
        if not broken:
            return None
        try:
            heal = self._heal(broken, start)
        except (CompilerError, OSError, http.client.HTTPException) as e:
            self._unhealed = broken
            self.failures.append(f"{', '.join(broken)}: {e}")
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= MAX_FAILED_HEALS:
                raise CompilerError(f"serve: healing {', '.join(broken)} failed {self._failed_in_a_row} times in a row, the "
                                    f"last with: {e}\n{self.server.log_tail()}") from e
            self._retry_at = time.monotonic() + self.interval_s * 2 ** (self._failed_in_a_row - 1)
            log.warning("serve: healing %s failed (%s); trying again in %.1fs", ", ".join(broken), e,
                        self._retry_at - time.monotonic())
            return None
        self._unhealed, self._failed_in_a_row = [], 0
        self.heals.append(heal)
        log.info("serve: %s healed (%s) in %.1fs; scoring again", heal.what, heal.how, heal.seconds)
        if sum(start - h.found_at < HEAL_WINDOW_S for h in self.heals) >= MAX_HEALS:
            raise CompilerError(f"serve: {MAX_HEALS} heals within {HEAL_WINDOW_S:.0f}s, the last of {heal.what}; giving up "
                                f"(a crash loop is not healed by restarts):\n{self.server.log_tail()}")
        return heal

    def _broken(self) -> list[str]:
        """["tritonserver"] where the server process is gone (or its restart failed), else the models to reload."""
        if self.server.process.poll() is not None or self._unhealed == ["tritonserver"]:
            return ["tritonserver"]
        dead = self.server.dead_models()
        if dead:
            log.warning("serve: the process of %s died; reloading it", ", ".join(dead))
        return sorted(set(dead) | set(self._unhealed))

    def _heal(self, broken: list[str], found_at: float) -> Heal:
        if broken == ["tritonserver"]:
            code = self.server.process.poll()
            log.warning("serve: tritonserver %s; starting it again on the same ports",
                        "was not ready after its restart" if code is None else f"exited with code {code}")
            self.server.stop()
            self.server.start()
            self.server.wait_ready()
            return Heal("tritonserver", "restart", found_at, time.monotonic() - found_at)
        self.server.reload(broken)
        return Heal(", ".join(broken), "reload", found_at, time.monotonic() - found_at)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.check()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs (the previous handlers come back after it)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        # Only a flag: an exception raised here can land inside logging's emit(), which swallows it.
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve_forever(cfg: ServerConfig, limit: memory.MemoryLimit | None = None, check_memory: bool = True) -> None:
    """Check the memory the repository needs against `limit` (default: the container's or machine's), start, print
    the endpoints, heal what dies (Supervisor) until Ctrl-C or SIGTERM, then stop cleanly."""
    limit = limit or memory.memory_limit()
    memory.check_budgets(cfg.repo, limit)
    with stop_on_signals() as stop:
        server = TritonServer(cfg)
        server.start()
        try:
            server.wait_ready(stop=stop)
            if check_memory and not stop.is_set():
                report = memory.measure(server, limit)
                log.info("serve: resident memory, %s:\n%s", report.largest, report.table())
                report.check()
            if not stop.is_set():
                log.info("serve: http %s  grpc %s  metrics %s  (Ctrl-C stops)", cfg.http_url, cfg.grpc_url, cfg.metrics_url)
            Supervisor(server).run(stop)
        finally:
            server.stop()
        log.info("serve: stop requested; server stopped")
