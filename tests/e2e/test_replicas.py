"""Two replica servers behind the real proxy (nginx): each user on one replica, exact answers, a replica's death
absorbed by the proxy's retries. Real tritonservers, real nginx, the real client."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE, FUSED
from compiler.repository import manifest
from compiler.serving import server_stats
from compiler.serving.client import ScoringClient
from compiler.serving.proxy import ProxyConfig, find_nginx, nginx_conf
from compiler.serving.replicas import Replicas, ReplicasConfig, core_shares
from compiler.serving.routing import user_key
from compiler.serving.server import ServerConfig, free_port, port_in_use

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.isfile("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/setup.sh installs nginx-light)")
USERS, VISITS = 12, 3


@pytest.fixture(scope="module")
def contract(served_repo):
    return manifest.read(served_repo).contract


@pytest.fixture(scope="module")
def visits(contract) -> list[tuple[int, dict]]:
    """(user, request) for USERS users, VISITS visits each, visit-major: each request a history of its own, and the
    user's profile inputs (what the routing key hashes) the same on every visit."""
    profiles = [contract.generate(contract.sizes(history=8, candidates=4), seed=500 + u) for u in range(USERS)]
    out = []
    for visit in range(VISITS):
        for u, profile in enumerate(profiles):
            request = contract.generate(contract.sizes(history=20 + 7 * visit + u, candidates=6), seed=100 * visit + u)
            out.append((u, {**request, **{name: profile[name] for name in contract.user_inputs}}))
    return out


@pytest.fixture(scope="module")
def group(served_repo):
    with Replicas(ReplicasConfig(served_repo, replicas=2, route="affinity", http_port=0, grpc_port=0)) as replicas:
        proxy = replicas.proxy.cfg
        yield replicas
    for port in (proxy.http_port, proxy.grpc_port):
        assert not port_in_use(proxy.host, port), f"the proxy's port {port} still answers after stop()"


def ensemble_counts(group, at_least: int = 0, timeout_s: float = 5.0) -> list[int]:
    """Each replica's count of ensemble requests, once they add up to `at_least` (Triton may record a request a moment
    after its answer left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = [server_stats.answered(s.cfg.http_url, ENSEMBLE) for s in group.servers]
        if sum(counts) >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_core_shares_split_the_cores_and_refuse_more_replicas_than_cores():
    assert core_shares((0, 1, 2, 3, 4), 2) == [(0, 1, 2), (3, 4)]
    with pytest.raises(CompilerError, match="3 replicas on 2 cores"):
        core_shares((0, 1), 3)


@pytest.mark.parametrize("route", ["affinity", "round-robin"])
def test_nginx_accepts_the_configuration(tmp_path, route):
    replicas = tuple(ServerConfig.on_free_ports(tmp_path) for _ in range(3))
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(ProxyConfig(replicas=replicas, route=route, http_port=free_port(), grpc_port=free_port()), tmp_path))
    checked = subprocess.run([str(find_nginx()), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert ("hash $route_key consistent" in conf.read_text()) == (route == "affinity")


def test_each_user_is_served_by_one_replica_and_answers_are_exact(group, contract, visits):
    proxy = group.proxy.cfg
    clients = {"http": ScoringClient(proxy.http_url, "http", retries=0),
               "grpc": ScoringClient(proxy.grpc_url, "grpc", retries=0)}
    fused = ScoringClient(proxy.http_url, "http", model=FUSED, retries=0)
    served_by = {}
    try:
        for u in range(USERS):
            protocol = "grpc" if u % 3 == 2 else "http"
            before = ensemble_counts(group)
            for user, request in visits:
                if user == u:
                    scores = clients[protocol].score(request)
                    np.testing.assert_allclose(scores, fused.score(request), atol=1e-4, rtol=0)
            grew = [after - b for after, b in zip(ensemble_counts(group, sum(before) + VISITS), before)]
            assert sorted(grew) == [0, VISITS], f"user {u} ({protocol}): requests per replica {grew}"
            served_by[u] = grew.index(VISITS)
    finally:
        for client in (*clients.values(), fused):
            client.close()
    assert set(served_by.values()) == {0, 1}, f"every user on one replica: {served_by}"
    keys = {user_key(request, contract) for _, request in visits}
    assert len(keys) == USERS  # one key per user (the profile), whatever the history


def test_killing_a_replica_under_load_loses_no_answer(group, visits):
    """Two client threads, no client retries: every request answered exactly while replica 0 is killed; the survivor
    takes its users."""
    proxy = group.proxy.cfg
    reference = ScoringClient(proxy.http_url, "http", model=FUSED, retries=0)
    try:
        expected = [reference.score(request) for _, request in visits]
    finally:
        reference.close()
    load = list(range(len(visits))) * 4
    position, lock, errors, latencies, answered = iter(range(len(load))), threading.Lock(), [], [], []
    killed = threading.Event()

    def client_loop():
        client = ScoringClient(proxy.http_url, "http", retries=0)
        try:
            while (i := next(position, None)) is not None:
                k = load[i]
                start = time.perf_counter()
                try:
                    scores = client.score(visits[k][1])
                except Exception as e:  # noqa: BLE001  (each failure counted, none expected)
                    errors.append(f"request {i}: {e}")
                    continue
                with lock:
                    latencies.append((time.perf_counter() - start, killed.is_set()))
                    answered.append(i)
                np.testing.assert_allclose(scores, expected[k], atol=1e-4, rtol=0)
        finally:
            client.close()

    survivor = group.servers[1]
    before = server_stats.snapshot(survivor.cfg.http_url)[ENSEMBLE]["success"]
    threads = [threading.Thread(target=client_loop) for _ in range(2)]
    for t in threads:
        t.start()
    while len(answered) < len(load) // 4:
        time.sleep(0.01)
    os.killpg(group.servers[0].process.pid, signal.SIGKILL)  # the server and its model processes, mid-load
    killed.set()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert sorted(answered) == list(range(len(load)))
    after = server_stats.snapshot(survivor.cfg.http_url)[ENSEMBLE]["success"]
    assert after - before > len(load) // 2  # the dead replica's users moved to the survivor
    print(f"replica killed: {len(load)} requests, 0 errors, slowest after the kill "
          f"{1e3 * max(s for s, after_kill in latencies if after_kill):.0f} ms")


def test_serve_replicas_from_the_command_line_and_stop_on_sigterm(served_repo, visits):
    """`compiler serve --replicas 2 --route round-robin`: one address scores; SIGTERM stops nginx and both servers."""
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "compiler", "serve", "--repo", str(served_repo), "--replicas", "2", "--route", "round-robin",
         "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            lines.append(process.stderr.readline())
            if "Ctrl-C stops" in lines[-1]:
                break
        assert f"http 127.0.0.1:{http_port}" in lines[-1], "".join(lines)
        replica_ports = [int(line.split("http 127.0.0.1:")[1].split(",")[0]) for line in lines if "replicas: replica" in line]
        assert len(replica_ports) == 2, "".join(lines)
        client = ScoringClient(f"127.0.0.1:{http_port}", "http", retries=0)
        try:
            for _, request in visits[:4]:
                assert np.isfinite(client.score(request)).all()
        finally:
            client.close()
        served = [server_stats.answered(f"127.0.0.1:{port}", ENSEMBLE) for port in replica_ports]
        assert all(served), f"round-robin: requests per replica {served}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        assert "replicas and proxy stopped" in process.stderr.read()
        assert not any(port_in_use("127.0.0.1", p) for p in (http_port, grpc_port, *replica_ports))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
