"""A real tritonserver on a real build, started once per session on free ports and always stopped."""

import os
import signal
from pathlib import Path

import pytest

from compiler.build import BuildConfig, build
from compiler.core.names import FUSED, NAIVE, TORCH
from compiler.repository.deployment import EmitConfig
from compiler.serving.server import ServerConfig, TritonServer, port_in_use
from compiler.verify.gates import VerifyConfig

QUICK_VERIFY = VerifyConfig(lengths=(7, 300), candidates=(3, 32), requests_per_case=1, auc_requests=0)


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model built with the baselines, for the python target (the embedded CPU server); all but stca_inductor,
    whose compiling at load would cost every server started on this repository seconds (test_inductor_serving.py)."""
    out = tmp_path_factory.mktemp("e2e") / "repo"
    build(BuildConfig(out=out, checkpoint=tiny_checkpoint, emit=EmitConfig(baselines=(FUSED, NAIVE, TORCH)), verify=QUICK_VERIFY))
    return out


@pytest.fixture(scope="session")
def triton(served_repo):
    cfg = ServerConfig.on_free_ports(served_repo)
    for port in (cfg.http_port, cfg.grpc_port, cfg.metrics_port):
        assert not port_in_use(cfg.host, port), f"port {port} answers before our server started"
    server = TritonServer(cfg)
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        yield server
    finally:
        pid = server.process.pid if server.process else None
        server.stop()
        assert not port_in_use(cfg.host, cfg.http_port), "the HTTP port still answers after stop()"
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)  # nothing of the server's process group is left (stubs included)
