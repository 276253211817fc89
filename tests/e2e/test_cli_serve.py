"""The serve and demo commands as a user runs them: real processes, real signals, nothing left behind."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from compiler.serving.server import free_port, port_in_use

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_endpoints_and_stops_cleanly_on_a_signal(served_repo, sig):
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "compiler", "serve", "--repo", str(served_repo), "--http-port", str(ports[0]),
         "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            if "Ctrl-C stops" in line or process.poll() is not None:
                break
        assert f"127.0.0.1:{ports[0]}" in lines[-1], "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        process.send_signal(sig)
        assert process.wait(120) == 0
        assert "stop requested; server stopped" in process.stderr.read()
        assert not group_alive(process.pid), "a tritonserver or stub process outlived `serve`"
        assert not any(port_in_use("127.0.0.1", p) for p in ports)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_serve_refuses_a_busy_port_and_a_non_repository(served_repo, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "compiler", "serve", "--repo", str(served_repo), "--http-port", str(busy)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"http port 127.0.0.1:{busy} is already in use" in result.stderr
    result = subprocess.run([sys.executable, "-m", "compiler", "serve", "--repo", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not a model repository" in result.stderr


def test_serve_refuses_a_repository_that_would_not_fit_in_its_memory_limit(served_repo):
    """The 1 GiB row cache alone exceeds 512 MiB: refused before the server starts. Under 1,100 MiB it fits, but not
    with the processes measured after the largest request: refused once measured, the server stopped."""
    http_port = free_port()
    serve = [sys.executable, "-m", "compiler", "serve", "--repo", str(served_repo), "--http-port", str(http_port),
             "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    result = subprocess.run([*serve, "--memory-limit", "512M"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "exceed the memory limit, 512 MiB (--memory-limit)" in result.stderr
    result = subprocess.run([*serve, "--memory-limit", "1100M"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "once its row caches fill, more than the memory limit 1,100 MiB" in result.stderr, result.stderr[-2000:]
    assert "| stca_split | 2 |" in result.stderr  # the table names each process
    assert not port_in_use("127.0.0.1", http_port)  # the server it started is stopped


def test_demo_builds_serves_ranks_and_stops(tmp_path, tiny_checkpoint):
    result = subprocess.run([sys.executable, "-m", "compiler", "demo", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "repo")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stderr[result.stderr.index("rank "):].splitlines()
    assert table[0].split()[:4] == ["rank", "finish", "(item", "id:"]
    ranks = [line.split()[0] for line in table[2:12]]
    assert ranks == [str(r) for r in range(1, 11)]
    finish_scores = [float(line.split()[2]) for line in table[2:12]]
    assert finish_scores == sorted(finish_scores, reverse=True)
    assert (tmp_path / "repo" / "manifest.json").is_file()


def test_a_killed_serve_takes_its_server_with_it(served_repo):
    """SIGKILL gives `serve` no chance to clean up; the server still must not outlive it."""
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "compiler", "serve", "--repo", str(served_repo), "--http-port", str(ports[0]),
         "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stderr=subprocess.PIPE, text=True,
    )
    while "Ctrl-C stops" not in process.stderr.readline():
        assert process.poll() is None
    server_pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()]
    assert server_pids, "serve started no tritonserver"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(group_alive(pid) for pid in server_pids):
        time.sleep(0.5)
    assert not any(group_alive(pid) for pid in server_pids), "tritonserver outlived its killed parent"
    assert not port_in_use("127.0.0.1", ports[0])
