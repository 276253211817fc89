"""The whole loop on one machine: build the demo model, serve it, score a sample request, stop the server."""

from pathlib import Path

from compiler.build import BuildConfig, build
from compiler.core.log import log
from compiler.serving.client import ScoringClient
from compiler.serving.server import ServerConfig, TritonServer
from compiler.stca.data import sample_requests


def run_demo(out: Path = Path("triton_repo"), checkpoint: Path | None = None, history_length: int = 2_000,
             n_candidates: int = 128, top: int = 10) -> str:
    """Returns the ranking table it printed. Without a checkpoint: the trained demo model."""
    result = build(BuildConfig(out=out, checkpoint=checkpoint))
    request = next(sample_requests(result.config, [history_length], seed=2_026, n_candidates=n_candidates)).inputs
    server_cfg = ServerConfig.on_free_ports(out)
    with TritonServer(server_cfg):
        client = ScoringClient(server_cfg.http_url)
        ranking = client.rank(request)
        client.close()
    table = ranking.table(top)
    log.info("demo: one request (L=%d history items, N=%d candidates) scored by the `stca` ensemble; top %d per task:\n%s",
             history_length, n_candidates, top, table)
    return table
