"""The proxy in front of several servers: nginx, one address for clients, each user's requests to one replica.

    with Proxy(ProxyConfig(replicas=(a.cfg, b.cfg), route="affinity")) as proxy:   # a, b: started TritonServers
        ScoringClient(proxy.cfg.http_url).score(inputs)

`affinity` hashes the routing key (compiler.serving.routing: the `stca-user-key` header every ScoringClient sends)
onto the replicas with nginx's consistent hashing (ketama: 160 points per server on a ring), so a user's requests
go to the replica whose row cache holds that user's rows, and a replica that leaves or joins moves only its own
share of the users. A request without the header gets nginx's request id as its key: spread, never piled onto one
replica. `round-robin` is nginx's default, for comparison. Both serve HTTP and gRPC (HTTP/2 to the proxy and on to
Triton).

A replica that stops answering (a refused or reset connection, HTTP 502 or 503) is skipped for
FAIL_TIMEOUT_S and the request is sent to the next replica on the ring: scoring is idempotent, so nginx is told to
retry POSTs (`non_idempotent`). A request that timed out is not retried (it may still be running and sending it again
adds to the load that delayed it), as in ScoringClient. Open-source nginx checks replicas passively, by the answers
to real requests; each replica's own health (a dead model process, a dead server) is the Supervisor's
(compiler.serving.replicas).

nginx comes from the Debian package nginx-light (scripts/setup.sh installs it); it runs in the foreground with
its configuration, logs and temporary files in a directory the Proxy owns for its lifetime.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.serving.routing import nginx_variable
from compiler.serving.server import Address, ServerConfig, Started, die_with_parent, port_in_use

ROUTES = ("affinity", "round-robin")
FAIL_TIMEOUT_S = 10  # how long a replica that failed a request is left out before nginx tries it again
NEXT_UPSTREAM_TRIES = 3  # the first replica and up to two others
TIMEOUT_S = 600  # reading an answer: a long history on a busy server takes seconds, never minutes


@dataclass(frozen=True, kw_only=True)
class ProxyConfig(Address):
    replicas: tuple[ServerConfig, ...]
    route: str = "affinity"
    nginx: Path | None = None  # default: nginx on PATH or in /usr/sbin

    def __post_init__(self):
        if self.route not in ROUTES:
            raise CompilerError(f"proxy: route {self.route!r} is not one of {', '.join(ROUTES)}")
        if not self.replicas:
            raise CompilerError("proxy: no replicas to route to")


def nginx_conf(cfg: ProxyConfig, workdir: Path) -> str:
    """nginx's whole configuration for `cfg`, its files under `workdir`."""
    balance = "hash $route_key consistent;" if cfg.route == "affinity" else "# round-robin: nginx's default"

    def upstream(name: str, port_of) -> str:
        servers = "\n".join(f"        server {r.host}:{port_of(r)} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;" for r in cfg.replicas)
        return f"    upstream {name} {{\n        {balance}\n{servers}\n        keepalive 32;\n    }}"

    temp = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# written by compiler.serving.proxy; route: {cfg.route}
daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    client_max_body_size 0;  # a request at the longest history is megabytes
    client_body_buffer_size 16m;  # kept in memory, so it can be sent again to the next replica without a file
    # the routing key: the user's, else this request's own id (a request without one is spread, not piled on one replica)
    map {nginx_variable()} $route_key {{ "" $request_id; default {nginx_variable()}; }}
{upstream("triton_http", lambda r: r.http_port)}
{upstream("triton_grpc", lambda r: r.grpc_port)}
    server {{
        listen {cfg.host}:{cfg.http_port};
        location / {{
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error http_502 http_503 non_idempotent;
            proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};
            proxy_read_timeout {TIMEOUT_S}s;
            proxy_send_timeout {TIMEOUT_S}s;
            proxy_buffering off;
        }}
    }}
    server {{
        listen {cfg.host}:{cfg.grpc_port} http2;
        location / {{
            grpc_pass grpc://triton_grpc;
            grpc_next_upstream error http_502 http_503 non_idempotent;
            grpc_next_upstream_tries {NEXT_UPSTREAM_TRIES};
            grpc_read_timeout {TIMEOUT_S}s;
            grpc_send_timeout {TIMEOUT_S}s;
        }}
    }}
}}
"""


def find_nginx(binary: Path | None = None) -> Path:
    found = binary or shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.isfile(p)), None)
    if found is None or not Path(found).is_file():
        raise CompilerError("proxy: nginx not found (scripts/setup.sh installs the Debian package nginx-light; "
                            "or apt-get install nginx-light)")
    return Path(found)


class Proxy(Started):
    """One nginx process in front of the replicas. Use as a context manager, or start()/wait_ready()/stop()."""

    def __init__(self, cfg: ProxyConfig):
        self.cfg = cfg
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None

    def start(self) -> None:
        cfg = self.cfg
        for name, port in (("http", cfg.http_port), ("grpc", cfg.grpc_port)):
            if port_in_use(cfg.host, port):
                raise CompilerError(f"proxy: {name} port {cfg.host}:{port} is already in use; pick another with --{name}-port")
        nginx = find_nginx(cfg.nginx)
        self._workdir = Path(tempfile.mkdtemp(prefix="stca-proxy-"))
        self._workdir.chmod(0o755)  # nginx's worker (a user without privileges where nginx starts as root) reads through it
        conf = self._workdir / "nginx.conf"
        conf.write_text(nginx_conf(cfg, self._workdir))
        log.info("proxy: nginx on %s (http %d, grpc %d) -> %d replicas, %s", cfg.host, cfg.http_port, cfg.grpc_port,
                 len(cfg.replicas), cfg.route)
        with open(self._workdir / "nginx.out", "wb") as out:
            self.process = subprocess.Popen([str(nginx), "-p", str(self._workdir), "-c", str(conf)], stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until nginx listens on both ports; raise with its log if it exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CompilerError(f"proxy: nginx exited with code {self.process.returncode}:\n{self.log_tail()}")
            if port_in_use(self.cfg.host, self.cfg.http_port) and port_in_use(self.cfg.host, self.cfg.grpc_port):
                return
            time.sleep(0.1)
        raise CompilerError(f"proxy: nginx not listening after {timeout_s:.0f}s:\n{self.log_tail()}")

    def _log(self, name: str) -> str:
        path = self._workdir / name if self._workdir else None
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    def error_log(self) -> str:
        """nginx's error log so far: among its lines, each upstream it could not reach or that dropped a request."""
        return self._log("error.log")

    def log_tail(self, lines: int = 40) -> str:
        text = self._log("nginx.out") + self.error_log()
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGQUIT (nginx's graceful stop: requests in flight finish), then SIGKILL what is left of its group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("proxy: nginx did not stop within %.0fs; killing it", timeout_s)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its worker, where the master left it behind
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
