"""Serve stage: run the real tritonserver on a repository, wait until it can score, keep it so, stop it cleanly.

The embedded CPU server is the tritonserver binary (Triton 2.51) that ships inside the nvidia-pytriton
wheel, with its Python backend. It needs its bundled libraries on LD_LIBRARY_PATH and a backend
directory holding the Python-backend stub built for the running interpreter; both are set up here, in a
temporary directory the server owns for its lifetime. The stub runs the models in this interpreter's
environment, so onnxruntime (and torch for the eager baseline) come from the same virtualenv.

Ready means able to score: every model ready and a small request scored through the ensemble
(compiler.serving.probe). Triton does not restart a Python-backend model whose process died, and keeps answering
ready while every request through it fails; the server runs in explicit model-control mode so that
`reload` can unload and load such a model, which starts new processes for it (Supervisor does this on its own).
"""

import ctypes
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from compiler.core.artifacts import MANIFEST
from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.core.names import ENSEMBLE
from compiler.repository.reader import read_config
from compiler.runtime.row_cache import region_files
from compiler.serving.probe import probe

# The environment of the server and its Python-backend stubs (they inherit it); the caller's own settings win.
# glibc malloc: the cut tensors are megabytes per request (20 MB at L=10,000 for the demo model), and by
# default glibc serves each such buffer with a fresh mmap and returns it on free, so every request faults its
# pages in again. Keeping them in the heap (threshold at glibc's 32 MiB maximum, no trimming) removed that:
# the history encoder's compute, timed inside its stub at L=10,000 N=128, went from 37-48 ms (4 runs) to
# 37-38 ms (2 runs; docs/serving.md).
SERVER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}


@dataclass(frozen=True)
class Address:
    """Where clients reach a server, or the proxy in front of several: one host, an HTTP and a gRPC port."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True, kw_only=True)
class ServerConfig(Address):
    repo: Path = Path("triton_repo")
    metrics_port: int = 8002
    tritonserver: Path | None = None  # default: the binary in the nvidia-pytriton wheel
    response_cache_bytes: int = 256 << 20  # used only by models that enable response_cache
    log_verbose: int = 0
    ready_timeout_s: float = 300.0
    cpus: tuple[int, ...] | None = None  # the cores the server and its model processes may run on (default: the caller's)

    @classmethod
    def on_free_ports(cls, repo: Path, **fields) -> "ServerConfig":
        """A config with three ports that are free now: for a server the program starts and stops itself."""
        return cls(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **fields)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class _Install:
    binary: Path
    libs: Path | None
    backends: Path | None  # the wheel's backends folder (the stub is added to a copy)
    stubs: Path | None
    caches: Path | None


def _find_install(binary: Path | None) -> _Install:
    if binary is not None:
        if not Path(binary).is_file():
            raise CompilerError(f"--tritonserver {binary}: no such file")
        return _Install(Path(binary), None, None, None, None)
    spec = importlib.util.find_spec("pytriton")  # not `import pytriton`: its own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise CompilerError("tritonserver: the nvidia-pytriton wheel is not installed (scripts/setup.sh installs it) "
                            "and no --tritonserver was given")
    root = Path(spec.submodule_search_locations[0]) / "tritonserver"
    libs = Path(spec.submodule_search_locations[0]).parent / "nvidia_pytriton.libs"
    return _Install(root / "bin" / "tritonserver", libs, root / "backends", root / "python_backend_stubs", root / "caches")


class Started:
    """Something started with start(), ready after wait_ready(), ended by stop(); as a context manager, stopped when the
    block ends or when it does not become ready."""

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TritonServer(Started):
    """One tritonserver process. Use as a context manager, or start()/wait_ready()/stop()."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._stub_instances: dict[str, str] | None = None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "tritonserver.log" if self._workdir else None

    def start(self) -> None:
        cfg = self.cfg
        if not (Path(cfg.repo) / MANIFEST).is_file() and not any(Path(cfg.repo).glob("*/config.pbtxt")):
            raise CompilerError(f"serve: {cfg.repo} is not a model repository (no */config.pbtxt); run `python -m compiler build`")
        for name, port in (("http", cfg.http_port), ("grpc", cfg.grpc_port), ("metrics", cfg.metrics_port)):
            if port_in_use(cfg.host, port):
                raise CompilerError(f"serve: {name} port {cfg.host}:{port} is already in use; pick another with --{name}-port")
        install = _find_install(cfg.tritonserver)
        self._stub_instances = None  # the configs as this start serves them
        self._workdir = Path(tempfile.mkdtemp(prefix="stca-triton-"))
        command = [
            str(install.binary),
            f"--model-repository={Path(cfg.repo).resolve()}",
            "--strict-model-config=true",
            "--model-control-mode=explicit", "--load-model=*",  # every model at start; `reload` needs explicit mode
            "--exit-on-error=true",
            f"--http-address={cfg.host}", f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={cfg.log_verbose}",
            f"--cache-config=local,size={cfg.response_cache_bytes}",
        ]
        env = {**SERVER_ENV, **os.environ}
        if install.backends is not None:
            command += [f"--backend-directory={self._backends(install)}"]
            if install.caches is not None:
                command += [f"--cache-directory={install.caches}"]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
            # The stub finds its Python environment through PATH (as pytriton starts it): put this
            # interpreter's bin first, so the models import numpy and onnxruntime from this virtualenv.
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        log.info("serve: starting %s on %s (http %d, grpc %d, metrics %d)", install.binary.name, cfg.host,
                 cfg.http_port, cfg.grpc_port, cfg.metrics_port)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                            preexec_fn=functools.partial(_child_setup, cfg.cpus))

    def _backends(self, install: _Install) -> Path:
        """A copy of the wheel's backends with the stub for this interpreter put where Triton looks for it."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = install.stubs / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise CompilerError(f"serve: nvidia-pytriton has no Python-backend stub for Python {version} ({stub})")
        backends = self._workdir / "backends"
        shutil.copytree(install.backends, backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def wait_ready(self, timeout_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Poll until the server and every model of the repository are ready and a request is scored (where the
        repository has the ensemble), or `stop` is set; raise with the log tail if the server dies or the time runs out."""
        deadline = time.monotonic() + (timeout_s or self.cfg.ready_timeout_s)
        models = sorted(p.parent.name for p in Path(self.cfg.repo).glob("*/config.pbtxt"))
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            if self.process.poll() is not None:
                raise CompilerError(f"serve: tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self._ok("/v2/health/ready") and all(self._ok(f"/v2/models/{m}/ready") for m in models) and self.can_score():
                log.info("serve: ready: %s", ", ".join(models))
                return
            time.sleep(0.5)
        if stop and stop.is_set():
            return
        raise CompilerError(f"serve: not ready after {timeout_s or self.cfg.ready_timeout_s:.0f}s:\n{self.log_tail()}")

    def _ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.cfg.http_url}{path}", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _post(self, path: str) -> None:
        request = urllib.request.Request(f"http://{self.cfg.http_url}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300):
                pass
        except urllib.error.HTTPError as e:
            raise CompilerError(f"serve: {path}: {e.code} {e.read().decode(errors='replace')}") from e

    def is_ready(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._ok("/v2/health/ready")

    def can_score(self) -> bool:
        """Whether every Python-backend model instance has its process and small requests through the ensemble are
        scored now (where the repository has one). The processes are checked too: with several instances of a model,
        a request may be scored by a live one while the dead one fails others."""
        if self.dead_models():
            return False
        return not (Path(self.cfg.repo) / ENSEMBLE / "config.pbtxt").is_file() or probe(self.cfg.http_url).ok

    def stub_instances(self) -> dict[str, str]:
        """Each Python-backend model instance the repository asks for (Triton names them <model>_<group>_<index>) ->
        its model. Read from the configs once per start: the supervisor asks every half second."""
        if self._stub_instances is not None:
            return self._stub_instances
        instances = {}
        for path in sorted(Path(self.cfg.repo).glob("*/config.pbtxt")):
            config = read_config(path)
            if config.backend != "python":
                continue
            for g, group in enumerate(config.instance_group or [None]):
                for i in range(group.count if group is not None and group.count else 1):
                    instances[f"{config.name}_{g}_{i}"] = config.name
        self._stub_instances = instances
        return instances

    def dead_models(self) -> list[str]:
        """The Python-backend models with an instance whose process is gone (exited, killed, or a zombie): Triton
        keeps them "ready" but they answer nothing."""
        expected = self.stub_instances()
        alive = {stub.instance for stub in stub_processes(self.process.pid) if stub.state not in "ZX"}
        return sorted({expected[name] for name in expected.keys() - alive})

    def reload(self, models: list[str], timeout_s: float = 120.0) -> None:
        """Unload and load `models` (new processes for a Python-backend model), load the ensemble again (Triton
        unloads it with a model it composes), and wait until a request is scored."""
        for model in models:
            self._post(f"/v2/repository/models/{model}/unload")
            deadline = time.monotonic() + timeout_s
            while self._ok(f"/v2/models/{model}/ready") and time.monotonic() < deadline:
                time.sleep(0.05)
            self._post(f"/v2/repository/models/{model}/load")
        if (Path(self.cfg.repo) / ENSEMBLE / "config.pbtxt").is_file():
            self._post(f"/v2/repository/models/{ENSEMBLE}/load")
        self.wait_ready(timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the server (it unloads the models and ends their stubs), then SIGKILL whatever is left of
        its process group, so no Python-backend stub outlives it."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the server leads its own group
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("serve: tritonserver did not stop within %.0fs; killing it", timeout_s)
                os.killpg(pgid, signal.SIGKILL)  # before waiting: a server that ignored SIGTERM must not hang its caller
        self.process.wait()  # reaped first: a zombie leader would keep its group alive for _kill_group
        _kill_group(pgid)
        for stale in region_files(pgid):  # where its models' shared row caches were (they ended with its processes)
            os.unlink(stale)
        self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


@dataclass(frozen=True)
class StubProcess:
    """A Python-backend process of a server: which model instance it runs, its state and resident memory."""

    pid: int
    model: str
    instance: str  # Triton's <model>_<group>_<index>
    state: str  # /proc's one-letter state: Z for a zombie
    resident_bytes: int  # all of it, the shared memory it maps among it
    shared_bytes: int  # of that, shared memory (RssShmem): a row cache its model's processes share, Triton's tensor pool

    @property
    def own_bytes(self) -> int:
        """What it holds resident less the shared memory it maps: its own share of the machine's memory."""
        return self.resident_bytes - self.shared_bytes


def shared_once(stubs: list[StubProcess]) -> int:
    """The shared memory a model's processes map, counted once: the most any one of them maps (they map the same
    region; 0 without processes)."""
    return max((s.shared_bytes for s in stubs), default=0)


def stub_processes(group: int) -> list[StubProcess]:
    """The Python-backend stubs in a server's process group (the server's pid: it leads its own group), from /proc.
    A stub's command line is the stub binary, its model.py (<repo>/<model>/1/model.py), ..., the instance name."""
    stubs = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if int(fields[2]) != group or not argv[0].endswith("triton_python_backend_stub"):
                continue
            model = Path(argv[1]).parent.parent.name
            instance = next(a for a in argv[2:] if a.startswith(f"{model}_"))
            pid = int(stat.parent.name)
            sizes = status_bytes(pid)
            stubs.append(StubProcess(pid, model, instance, fields[0], sizes.get("VmRSS", 0), sizes.get("RssShmem", 0)))
        except (OSError, IndexError, ValueError, StopIteration):
            continue  # ended while being read, or not ours to read
    return sorted(stubs, key=lambda s: s.instance)


def status_bytes(pid: int) -> dict[str, int]:
    """A process's sizes in /proc/<pid>/status, in bytes (VmRSS: all it holds resident; RssShmem: of that, shared memory).
    A zombie has none."""
    sizes = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.endswith(" kB"):
            sizes[name] = int(value.split()[0]) * 1024
    return sizes


def resident_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS)."""
    return status_bytes(pid).get("VmRSS", 0)


def die_with_parent() -> None:
    """In a child (preexec_fn): have Linux send it SIGTERM if the process that started it dies, however it
    dies, so a killed `serve`, `bench` or test run never leaves a tritonserver or perf_analyzer behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup(cpus: tuple[int, ...] | None) -> None:
    """In the server's process before it runs: die with the parent; keep to `cpus` where given (its model processes
    inherit the mask, and ONNX Runtime sizes nothing from it: the configs' thread counts do)."""
    die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)


def _kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL every process left in the group and wait until none is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"processes of group {pgid} survived SIGKILL for {timeout_s:.0f}s")
