"""Where a request's time goes inside Triton: per-model statistics, as deltas between two snapshots; and, from the
metrics endpoint, the history row cache's counters, the time stca_split spent in each of its halves, and a model's
gauges (stca_inductor's compile seconds at load).

Triton's statistics extension (GET /v2/models/stats) keeps, per model, cumulative counts and nanoseconds
for each stage of a request: waiting in the scheduler queue, copying inputs in (compute_input), running
(compute_infer) and copying outputs out (compute_output). For an ensemble, each composing model keeps its
own, so a snapshot before and after a load says how long each half of the split spent in each stage, per
request, under exactly that load.
"""

import json
import time
import urllib.request
from dataclasses import dataclass

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
HALF_TIME_METRIC = "stca_split_half_ms"  # stca_split's counter per half; the served model.py spells it too (it imports
# nothing of this package: compiler/runtime/triton_python/onnx_model.py)


@dataclass(frozen=True)
class StageTimes:
    """One model's mean milliseconds per successful request in each stage, over `requests` requests."""

    model: str
    requests: int
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @property
    def total_ms(self) -> float:
        return self.queue_ms + self.compute_input_ms + self.compute_infer_ms + self.compute_output_ms


def snapshot(http_url: str, timeout_s: float = 10.0) -> dict[str, dict[str, int]]:
    """model -> {"success": requests, stage: cumulative ns} for every model the server has run."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=timeout_s) as r:
        stats = json.loads(r.read())
    counts = {}
    for model in stats["model_stats"]:
        inference = model["inference_stats"]
        entry = {"success": int(inference["success"]["count"])}
        entry.update({stage: int(inference[stage]["ns"]) for stage in STAGES})
        # several versions of one model add up; this project emits version 1 only
        counts[model["name"]] = {k: counts.get(model["name"], {}).get(k, 0) + v for k, v in entry.items()}
    return counts


def answered(http_url: str, model: str) -> int:
    """How many requests a model has answered successfully since the server started (0: none, or no such model)."""
    return snapshot(http_url).get(model, {}).get("success", 0)


def settled_snapshot(http_url: str, before: dict, models: list[str], timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
    """A snapshot taken once the named models have each answered as many requests since `before` as the busiest of them.

    Every model in a COMPOSING tuple answers once per request of its pipeline, but Triton records a composing model's
    statistics when its response is released, which can come a moment after the client already holds the pipeline's
    answer: a snapshot taken at once can miss the last request of one half (seen as a missing scorer in CI). After
    `timeout_s` the last snapshot is returned as it is."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = snapshot(http_url)
        counts = [after.get(m, {}).get("success", 0) - before.get(m, {}).get("success", 0) for m in models]
        if min(counts) == max(counts) or time.monotonic() > deadline:
            return after
        time.sleep(0.01)


def between(before: dict, after: dict, models: list[str]) -> list[StageTimes]:
    """Each named model's stage times per request over the requests it answered between two snapshots
    (a model that answered none is left out)."""
    times = []
    for model in models:
        new, old = after.get(model), before.get(model, {})
        if new is None:
            continue
        requests = new["success"] - old.get("success", 0)
        if requests <= 0:
            continue
        ms = {stage: (new[stage] - old.get(stage, 0)) / requests / 1e6 for stage in STAGES}
        times.append(StageTimes(model, requests, *(ms[s] for s in STAGES)))
    return times


def since(http_url: str, before: dict, models: list[str]) -> list[StageTimes]:
    """`between` a snapshot and the server's settled statistics now."""
    return between(before, settled_snapshot(http_url, before, models), models)


def history_cache_counters(metrics_url: str, model: str, timeout_s: float = 10.0) -> dict[str, float]:
    """A model's stca_history_cache_* metrics (compiler/runtime/row_cache.py: hits, misses, evictions, entries, bytes) from
    Triton's Prometheus endpoint; empty where the model keeps no row cache. Counters add up over the model's instances;
    a gauge (entries, bytes) is the largest any instance reports: the instances of a model share one cache, and each
    reports its size as of the last request it served, so the latest report is the largest (the cache only shrinks
    when it is emptied after a process died changing it, and then until the other instances serve again)."""
    totals: dict[str, float] = {}
    gauges = set()
    for line in _metrics(metrics_url, timeout_s):
        if line.startswith("# TYPE stca_history_cache_") and line.endswith(" gauge"):
            gauges.add(line.split()[2].removeprefix("stca_history_cache_"))
        elif line.startswith("stca_history_cache_") and f'model="{model}"' in line:
            name, value = line.split("{", 1)[0].removeprefix("stca_history_cache_"), float(line.rsplit(" ", 1)[1])
            totals[name] = max(totals.get(name, value), value) if name in gauges else totals.get(name, 0.0) + value
    return totals


def split_half_ms(metrics_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """stca_split's cumulative milliseconds in each half ({"encoder": ms, "scorer": ms}; HALF_TIME_METRIC), summed over
    its instances; empty where the server has no stca_split."""
    totals: dict[str, float] = {}
    for line in _metrics(metrics_url, timeout_s):
        if line.startswith(HALF_TIME_METRIC + "{"):
            half = _label(line, "half")
            totals[half] = totals.get(half, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def halves_since(metrics_url: str, before: dict[str, float], requests: int) -> dict[str, float]:
    """stca_split's mean milliseconds a request in each half over the `requests` it answered since the split_half_ms
    reading `before`."""
    return {half: (ms - before.get(half, 0.0)) / requests for half, ms in split_half_ms(metrics_url).items()}


def model_gauge(metrics_url: str, metric: str, timeout_s: float = 10.0) -> dict[str, float]:
    """A gauge's value per model (its `model` label), the largest over the model's instances; empty where no model sets it.
    E.g. the seconds a torch.compile'd model's warm-up took at load (compiler.runtime.inductor.COMPILE_SECONDS_METRIC)."""
    values: dict[str, float] = {}
    for line in _metrics(metrics_url, timeout_s):
        if line.startswith(metric + "{") and 'model="' in line:
            model = _label(line, "model")
            values[model] = max(values.get(model, float("-inf")), float(line.rsplit(" ", 1)[1]))
    return values


def _label(line: str, name: str) -> str:
    """The value of label `name` in one Prometheus sample line."""
    return line.split(f'{name}="', 1)[1].split('"', 1)[0]


def _metrics(metrics_url: str, timeout_s: float) -> list[str]:
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as r:
        return r.read().decode().splitlines()
