"""perf_analyzer, driven: one run at one concurrency against a served model, on an input file of real requests."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.log import log
from compiler.serving.server import die_with_parent


def perf_analyzer_binary() -> tuple[str, dict]:
    """perf_analyzer from tritonclient[all] and the environment it needs (libcudart, even on a CPU host)."""
    binary = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(binary).is_file():
        raise CompilerError("bench: perf_analyzer not found; scripts/setup.sh installs tritonclient[all]==2.50.0, which ships it")
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        lib = str(Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH")) if p)
    except ImportError:
        pass
    return binary, env


def write_input_file(path: Path, requests: list[dict]) -> Path:
    """perf_analyzer --input-data JSON: one entry per request, every input with its content and shape."""
    data = {"data": [{name: {"content": v.reshape(-1).tolist(), "shape": list(v.shape)} for name, v in r.items()} for r in requests]}
    path.write_text(json.dumps(data))
    return path


class UnstableMeasurement(CompilerError):
    """perf_analyzer's windows never agreed within the stability percentage."""


def load_label(history: int, candidates: int) -> str:
    """The name of a fixed-size load: every request with `history` items and `candidates` candidates."""
    return f"L={history:.0f} N={candidates}"


def perf(model: str, url: str, inputs: Path, concurrency: int, csv_path: Path, *, window_requests: int, protocol: str = "http",
         stability_percentage: int = 50, timeout_s: float = 600.0) -> dict:
    """One perf_analyzer run at one concurrency; returns its CSV row (latencies in microseconds).

    Where the windows do not agree within the stability percentage, the window is doubled (more requests
    average out two shared cores' jitter), twice, before UnstableMeasurement."""
    binary, env = perf_analyzer_binary()
    for window in (window_requests, 2 * window_requests, 4 * window_requests):
        command = [
            binary, "-m", model, "-u", url, "-i", protocol, "--input-data", str(inputs),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            # count windows, not time windows: a 2-core machine rarely holds 10% stability between short windows
            "--measurement-mode", "count_windows", "--measurement-request-count", str(window),
            "--max-trials", "5", "--stability-percentage", str(stability_percentage), "-f", str(csv_path),
        ]
        csv_path.unlink(missing_ok=True)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s,
                                preexec_fn=die_with_parent)
        output = result.stdout + result.stderr
        if result.returncode == 0 and csv_path.is_file():
            break
        if "Failed to obtain stable measurement" not in output:
            raise CompilerError(f"bench: perf_analyzer failed on {model} (exit {result.returncode}): {output[-800:]}")
        log.info("bench: %s at concurrency %d not stable within %s%% over windows of %d requests", model, concurrency,
                 stability_percentage, window)
    else:
        raise UnstableMeasurement(f"{model} at concurrency {concurrency}: no {stability_percentage}% stable measurement "
                                  f"in 5 windows of up to {window} requests")
    with csv_path.open() as f:
        row = next(csv.DictReader(f))
    return {"concurrency": concurrency, "window_requests": window, "throughput": float(row["Inferences/Second"]),
            **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1e3 for p in (50, 90, 99)},
            "server_queue_ms": float(row["Server Queue"]) / 1e3, "server_compute_ms": float(row["Server Compute Infer"]) / 1e3}
