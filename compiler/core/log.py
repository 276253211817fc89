"""One logger for the package; stages log a start line and a finish line with their time and key number."""

import logging
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("compiler")


def configure(verbose: bool = False) -> None:
    """Called once by the CLI; library users configure logging themselves."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class Stage:
    """Collects the one-line summary a stage reports when it finishes."""

    def __init__(self, name: str):
        self.name, self.summary = name, ""


@contextmanager
def stage(name: str):
    """`with stage("export") as s: ...; s.summary = "41 nodes"` logs `export: 41 nodes (1.2s)`."""
    s = Stage(name)
    log.info("%s ...", name)
    start = time.perf_counter()
    yield s
    log.info("%s: %s (%.1fs)", name, s.summary or "done", time.perf_counter() - start)


class Progress:
    """A progress line for long loops: at most one log line every `every_s` seconds, plus the last."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            log.info("  %s %d/%d  %.0fs elapsed, ~%.0fs left %s", self.what, self.done, self.total, now - self.start, eta, note)
