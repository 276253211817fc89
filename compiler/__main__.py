"""python -m compiler <command>: a thin layer over the Python API.

Each command has a parser function (`_<command>_parser`), a config function (`<command>_config`: the arguments as the
config the API takes) and a handler (`cmd_<command>`: config -> call -> one summary). The handlers import the API
inside themselves, so `--help` loads no torch.

A CompilerError (bad input, a missed gate) prints one line and exits 2; anything else is a bug and
keeps its traceback.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from compiler.core.errors import CompilerError
from compiler.core.log import configure, log
from compiler.core.names import BASELINES, ENSEMBLE, INDUCTOR, PYTORCH
from compiler.runtime.row_cache import DEFAULT_HISTORY_CACHE_BYTES
from compiler.serving.proxy import ROUTES

# ---------------------------------------------------------------------------------------------------------- arguments


def input_range(text: str) -> tuple[str, tuple[float, float]]:
    """'name=lo:hi' -> (name, (lo, hi))."""
    name, _, bounds = text.partition("=")
    lo, _, hi = bounds.partition(":")
    try:
        return name, (float(lo), float(hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=LO:HI (e.g. history_item_ids=0:99999)") from None


def byte_size(text: str) -> int:
    """'1G', '512M', '64K' or a plain number of bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1:].upper() in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 1G, 512M, 0)") from None


def int_list(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 1,2,4)") from None


def names(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b')."""
    return tuple(text.split(","))


def add_user_model_arguments(p: argparse.ArgumentParser, samples: bool = True) -> None:
    g = p.add_argument_group("your own model (instead of STCA's --checkpoint or --preset)")
    g.add_argument("--onnx", type=Path, help="an ONNX file of your model (fp32)")
    g.add_argument("--exported", type=Path, help="a torch.export.save'd ExportedProgram (.pt2) of your model")
    g.add_argument("--request-inputs", metavar="A,B,...", help="the inputs sent once per request (the rest are per candidate)")
    g.add_argument("--candidate-axis", type=int, help="the candidate inputs' axis along candidates (default: found from the symbolic dims)")
    if samples:
        g.add_argument("--samples", type=Path, help="your requests, JSON lines (the format score --request reads): they drive "
                                                    "verification, calibration and warmup (default: generated from the inputs' dtypes)")
        g.add_argument("--input-range", type=input_range, action="append", metavar="NAME=LO:HI",
                       help="valid values of an input: the server refuses others, generated requests draw from them (repeat)")


def user_model_spec(args):
    """The --onnx / --exported arguments as a UserModelSpec, or None for an STCA build."""
    from compiler.load.user_model import UserModelSpec

    if args.onnx is None and args.exported is None:
        for flag in ("request_inputs", "candidate_axis", "samples"):
            if getattr(args, flag, None) is not None:
                raise CompilerError(f"--{flag.replace('_', '-')} goes with --onnx or --exported (your own model)")
        return None
    return UserModelSpec(onnx=args.onnx, exported=args.exported, candidate_axis=args.candidate_axis,
                         request_inputs=tuple(n for n in (args.request_inputs or "").split(",") if n),
                         samples=getattr(args, "samples", None), input_ranges=dict(getattr(args, "input_range", None) or []))

# -------------------------------------------------------------------------------------------------------------- build


def cmd_build(args) -> int:
    """Export, split, convert, verify and emit a Triton repository."""
    from compiler.build import build

    result = build(build_config(args))
    v = result.verification
    log.info("built %s: %s, max abs error %.2e, %s (report: %s)", result.out, result.precision,
             v.max_abs_error, "gates passed" if v.passed else "GATES MISSED (accepted)", result.out / "report.md")
    return 0


def build_config(args):
    """The build arguments as a compiler.build.BuildConfig."""
    from compiler.build import BuildConfig
    from compiler.precision.convert import PrecisionConfig
    from compiler.repository.deployment import EmitConfig
    from compiler.repository.engines import EngineConfig, Profile

    return BuildConfig(
        out=args.out, checkpoint=args.checkpoint, preset=args.preset, user_model=user_model_spec(args), attention=args.attention,
        expected_candidates=args.expected_candidates, expected_history=args.expected_history,
        expected_hit_rate=args.expected_hit_rate, max_history=args.max_history,
        max_candidates=args.max_candidates, opset=args.opset,
        precision=PrecisionConfig(args.precision, args.encoder_precision, args.scorer_precision, args.calibration,
                                  int8_high_precision=args.int8_high_precision, cut=args.cut_dtype, int8_form=args.int8_form),
        emit=EmitConfig(target=args.target, instances=args.instances, device=args.device, cpu_threads=args.cpu_threads,
                        baselines=args.baselines, ort_trt_accelerator=args.ort_trt_accelerator, fused_attention=args.fused_attention,
                        response_cache=args.response_cache, history_cache_bytes=args.history_cache_bytes,
                        history_cache_admission=args.history_cache_admission, history_cache_skip=args.history_cache_skip,
                        history_cache_at=args.history_cache_at, split_processes=args.split_processes,
                        queue_limit=args.queue_limit),
        engines=EngineConfig(profiles=tuple(Profile.parse(p) for p in args.profile), timing_cache=args.timing_cache),
        accept_accuracy_loss=args.accept_accuracy_loss,
    )


def _build_parser(sub) -> None:
    b = sub.add_parser("build", help=cmd_build.__doc__, description=cmd_build.__doc__)
    b.add_argument("--checkpoint", type=Path, help="checkpoint directory (config.json + model.safetensors); default: the demo model")
    b.add_argument("--preset", help="build an untrained seeded model of a named size instead (paper, medium, small, tiny)")
    b.add_argument("--out", type=Path, default=Path("triton_repo"), help="output repository (default: triton_repo)")
    _build_precision_arguments(b)
    b.add_argument("--attention", choices=["kv", "reordered", "auto"],
                   help="attention form (default: the checkpoint's); auto: the cheaper one by the cost model")
    b.add_argument("--expected-candidates", type=int, default=256, help="attention auto: candidates per request (default 256)")
    b.add_argument("--expected-history", type=int, help="attention auto: typical history length (default: --max-history)")
    b.add_argument("--expected-hit-rate", type=float, default=0.0,
                   help="attention auto: the share of history rows the history row cache serves, e.g. 0.9 for returning "
                        "users (default 0: unique traffic); the encoder's work is priced for the rest")
    b.add_argument("--max-history", type=int, help="longest history served (default: the model config's, 10000)")
    b.add_argument("--max-candidates", type=int, help="most candidates per request (default 1024)")
    b.add_argument("--opset", type=int, default=18, help="ONNX opset, 17..20 (default 18)")
    _build_target_arguments(b)
    _build_serving_arguments(b)
    b.add_argument("--accept-accuracy-loss", action="store_true", help="write the repository even if a gate fails")
    add_user_model_arguments(b)
    b.set_defaults(handler=cmd_build)


def _build_precision_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8, for both halves (default fp32)")
    b.add_argument("--encoder-precision", help="override --precision for the history encoder")
    b.add_argument("--scorer-precision", help="override --precision for the candidate scorer")
    b.add_argument("--calibration", type=Path, help="int8 calibration set (python -m compiler calibrate)")
    b.add_argument("--int8-high-precision", default="fp32", help="dtype int8 leaves unquantized: fp32 (default) or fp16")
    b.add_argument("--int8-form", choices=["tensorrt", "cpu"],
                   help="int8 for TensorRT (symmetric) or ONNX Runtime's CPU integer kernels (uint8 activations); "
                        "default: the one the target's device runs")
    b.add_argument("--cut-dtype", choices=["fp32", "fp16"],
                   help="dtype the cut tensors cross in (default: fp32 for fp32 builds; for the others fp16 where the cut "
                        "is copied between processes or read from GPU memory, else the dtype the scorer computes in; "
                        "an fp16 cut is verified against the fp16 gates)")


def _build_target_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--target", default="python", help="python (embedded CPU default) | onnxruntime | tensorrt | auto")
    b.add_argument("--profile", action="append", default=[], help="tensorrt: L=MIN:OPT:MAX,N=MIN:OPT:MAX (repeat for several)")
    b.add_argument("--timing-cache", type=Path, help="tensorrt: timing cache file (default under ~/.cache/stca-compiler)")
    b.add_argument("--instances", type=int, help="instances per composing model (default: 1 on a GPU, the thread budget's on a CPU)")
    b.add_argument("--device", choices=["cpu", "gpu"],
                   help="where the models run (default: cpu for the python target, gpu for onnxruntime and tensorrt)")
    b.add_argument("--cpu-threads", type=int, default=0,
                   help="on a CPU: the cores the served repository may use, shared between its models (default: this "
                        "machine's); python -m compiler tune then measures the best split of them")
    b.add_argument("--baselines", type=names, nargs="?", const=BASELINES, default=(), metavar="NAMES",
                   help=f"also emit baselines for benchmarks: all of {', '.join(BASELINES)} ({' and '.join(PYTORCH)} on the "
                        f"python target only), or those named, comma-separated ({INDUCTOR} compiles for about 40 s at load)")
    b.add_argument("--ort-trt-accelerator", action="store_true", help="onnxruntime target: enable ORT's TensorRT accelerator")
    b.add_argument("--fused-attention", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU: run attention as ONNX Runtime's fused MultiHeadAttention, which never holds the N x L "
                        "scores (the default); --no-fused-attention keeps the exported MatMul/Softmax form")


def _build_serving_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--split-processes", type=int, choices=[1, 2],
                   help="python target: serve both halves in one Python-backend process (1, the default: the cut is handed "
                        "over in memory) or as two models, each its own process (2: the cut is copied between them)")
    b.add_argument("--response-cache", action="store_true",
                   help="enable Triton's response cache on the history encoder (on the python target, the halves then "
                        "serve in two processes)")
    b.add_argument("--history-cache-bytes", type=byte_size, default=DEFAULT_HISTORY_CACHE_BYTES, metavar="BYTES",
                   help="python target: the history encoder's row cache, over all its instances, e.g. 512M or 2G "
                        "(default 1G; 0 turns it off)")
    b.add_argument("--history-cache-admission", choices=["frequency", "all"], default="frequency",
                   help="python target: which computed rows a full row cache keeps: those asked for more often than the "
                        "least recently used rows they would replace (frequency, the default), or every one (all: plain LRU)")
    b.add_argument("--history-cache-skip", action=argparse.BooleanOptionalAction, default=True,
                   help="python target: a full row cache that costs more than it saves on the traffic of late is skipped, "
                        "one request in 16 still going through it to notice when it would pay again (the default); "
                        "--no-history-cache-skip consults it on every request")
    b.add_argument("--queue-limit", type=int, default=0, metavar="N",
                   help="requests each model of the ensemble keeps waiting beyond those its instances run; more are refused at once "
                        "with a retryable error (HTTP 503) instead of waiting ever longer under overload (e.g. 16; default 0: no limit, "
                        "as the bound's dispatch costs throughput on a small machine: docs/serving.md, Overload)")
    b.add_argument("--history-cache-at", choices=["encoder", "scorer"],
                   help="with the halves in two processes: the one holding the row cache, the history encoder's (default), "
                        "or the scorer's, so only the row keys cross between the two steps instead of the cut")

# --------------------------------------------------------------------------------------------------------------- tune


def cmd_tune(args) -> int:
    """Measure a few CPU thread budgets of a built repository on the embedded server; keep the fastest."""
    from compiler.measure.tune import tune

    cfg = tune_config(args)
    print("\n".join(_sweep_table(tune(cfg), cfg.repo)))
    return 0


def tune_config(args):
    """The tune arguments as a compiler.measure.tune.TuneConfig."""
    from compiler.measure.tune import TuneConfig

    return TuneConfig(repo=args.repo, history=args.history_length, candidates=args.candidates, requests=args.requests,
                      concurrency=args.concurrency, cpu_threads=args.cpu_threads)


def _sweep_table(result, repo) -> list[str]:
    """The tune summary: each budget's throughput per tuned model, and the placements chosen."""
    from compiler.repository.budget import Placement
    from compiler.repository.reader import composing

    models = list(result.sweep[0]["throughput"])
    lines = ["| budget (instances x threads) | " + " | ".join(f"{m} req/s" for m in models) + " |", "|---|" + "---:|" * len(models)]
    for entry in result.sweep:
        label = "; ".join(f"{m} {Placement(**p).label()}" for m, p in entry["placements"].items())
        lines.append(f"| {label} | " + " | ".join(f"{entry['throughput'][m]:.1f}" for m in models) + " |")
    served = composing(repo)
    lines.append("chosen: " + "; ".join(f"{m} -> {'/'.join(result.chosen[p].label() for p in served[m])}" for m in models))
    return lines


def _tune_parser(sub) -> None:
    tu = sub.add_parser("tune", help=cmd_tune.__doc__, description=cmd_tune.__doc__)
    tu.add_argument("--repo", type=Path, default=Path("triton_repo"), help="a built repository (default: triton_repo)")
    tu.add_argument("--history-length", type=int, help="L of every request of the load (default: KuaiRand-1K lengths)")
    tu.add_argument("--candidates", type=int, default=128, help="N per request (default 128)")
    tu.add_argument("--requests", type=int, default=16, help="distinct requests in the load (default 16)")
    tu.add_argument("--concurrency", type=int_list, default="1,2,4",
                    help="levels measured; each model is ranked by its best (default 1,2,4)")
    tu.add_argument("--cpu-threads", type=int, default=0, help="cores to budget (default: what the build recorded)")
    tu.set_defaults(handler=cmd_tune)

# ---------------------------------------------------------------------------------------------------------------- cut


def cmd_cut(args) -> int:
    """Export and split a model, and print what crosses the cut (no verification, no output files)."""
    from compiler.build import load_and_split
    from compiler.repository.cut_summary import describe_cut

    subject, _, parts = load_and_split(cut_config(args))
    print("\n".join(describe_cut(parts, subject.contract)))
    return 0


def cut_config(args):
    """The cut arguments as the compiler.build.BuildConfig load_and_split takes (load, export and split only)."""
    from compiler.build import BuildConfig

    return BuildConfig(checkpoint=args.checkpoint, preset=args.preset, attention=args.attention, max_history=args.max_history,
                       user_model=user_model_spec(args))


def _cut_parser(sub) -> None:
    ct = sub.add_parser("cut", help=cmd_cut.__doc__, description=cmd_cut.__doc__)
    ct.add_argument("--checkpoint", type=Path)
    ct.add_argument("--preset", help="paper, medium, small or tiny (an untrained seeded model)")
    ct.add_argument("--attention", choices=["kv", "reordered"])
    ct.add_argument("--max-history", type=int, help="the L at which bytes per request are counted (default 10000)")
    add_user_model_arguments(ct, samples=False)
    ct.set_defaults(handler=cmd_cut)

# ---------------------------------------------------------------------------------------------------------- calibrate


def cmd_calibrate(args) -> int:
    """Write an INT8 calibration set: generated requests at KuaiRand-1K lengths, or your own (JSON lines)."""
    from compiler.precision import calibrate

    config = calibrate_config(args)
    if args.requests is not None:
        result = calibrate.from_jsonl(args.out, args.requests, config)
    else:
        result = calibrate.generate(args.out, config, count=args.count, n_candidates=args.candidates, seed=args.seed)
    log.info("calibration set %s: %d requests, sha256 %s", result.path, result.count, result.sha256)
    return 0


def calibrate_config(args):
    """The model the set is for, as a compiler.stca.model.STCAConfig (--checkpoint's, or --preset's, default small)."""
    from compiler.stca.checkpoint import load_config
    from compiler.stca.model import preset

    config = load_config(args.checkpoint) if args.checkpoint else preset(args.preset or "small")
    return replace(config, max_history=args.max_history) if args.max_history else config


def _calibrate_parser(sub) -> None:
    cb = sub.add_parser("calibrate", help=cmd_calibrate.__doc__, description=cmd_calibrate.__doc__)
    cb.add_argument("--out", type=Path, default=Path("calibration/demo"), help="directory to write (default calibration/demo)")
    cb.add_argument("--requests", type=Path, help="your requests: JSON lines, one {input name: list} object per line")
    cb.add_argument("--checkpoint", type=Path, help="the model the set is for (its field counts and served maximum)")
    cb.add_argument("--preset", help="or a preset (default small, the demo model's)")
    cb.add_argument("--max-history", type=int, help="clip generated lengths here (default: the model's, 10000)")
    cb.add_argument("--count", type=int, default=32, help="generated requests (default 32)")
    cb.add_argument("--candidates", type=int, default=128, help="candidates per generated request (default 128)")
    cb.add_argument("--seed", type=int, default=1234)
    cb.set_defaults(handler=cmd_calibrate)

# -------------------------------------------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    """Train the demo model on synthetic requests (CPU, a few minutes) and save a checkpoint."""
    from compiler.stca.train import train

    result = train(train_config(args), args.out)
    log.info("saved %s; held-out AUC %s", result.checkpoint, result.auc)
    return 0


def train_config(args):
    """The train arguments as a compiler.stca.train.TrainConfig (the checkpoint goes to --out)."""
    from compiler.stca.train import TrainConfig

    return TrainConfig(preset=args.preset, attention=args.attention, steps=args.steps, seed=args.seed)


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    t.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    t.add_argument("--preset", default="small")
    t.add_argument("--attention", choices=["kv", "reordered"], default="kv")
    t.add_argument("--steps", type=int, default=4_000)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(handler=cmd_train)

# -------------------------------------------------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    """Run tritonserver on a built repository, healing a model process or server that dies, until Ctrl-C or SIGTERM."""
    from compiler.serving.memory import MemoryLimit
    from compiler.serving.supervisor import serve_forever

    limit = MemoryLimit(args.memory_limit, "--memory-limit") if args.memory_limit else None
    if args.replicas > 1:
        from compiler.serving.replicas import ReplicasConfig, serve_replicas_forever

        serve_replicas_forever(ReplicasConfig(args.repo, args.replicas, args.route, args.host, args.http_port, args.grpc_port,
                                              tritonserver=args.tritonserver), limit)
        return 0
    serve_forever(serve_config(args), limit, check_memory=args.memory_check)
    return 0


def serve_config(args):
    """The serve arguments as a compiler.serving.server.ServerConfig."""
    from compiler.serving.server import ServerConfig

    return ServerConfig(repo=args.repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                        metrics_port=args.metrics_port, tritonserver=args.tritonserver, log_verbose=args.log_verbose)


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    s.add_argument("--repo", type=Path, default=Path("triton_repo"), help="model repository (default: triton_repo)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--tritonserver", type=Path, help="tritonserver binary (default: the one in the nvidia-pytriton wheel)")
    s.add_argument("--log-verbose", type=int, default=0)
    s.add_argument("--memory-limit", type=byte_size, metavar="BYTES",
                   help="the memory the server may use (default: the container's cgroup limit, else the machine's memory)")
    s.add_argument("--memory-check", action=argparse.BooleanOptionalAction, default=True,
                   help="at start, send the largest request to every instance, print each process's resident memory and "
                        "what the row caches may still take, and stop if the total exceeds the limit (the default)")
    s.add_argument("--replicas", type=int, default=1, metavar="R",
                   help="serve R replicas of the repository, each on its share of the cores and of the row cache's budget, "
                        "behind nginx on --http-port/--grpc-port (default 1: one server, no proxy)")
    s.add_argument("--route", choices=ROUTES, default="affinity",
                   help="with --replicas: affinity (each user's requests to one replica, by consistent hashing of the "
                        "stca-user-key header; the default) or round-robin")
    s.set_defaults(handler=cmd_serve)

# -------------------------------------------------------------------------------------------------------------- score


def cmd_score(args) -> int:
    """Score one request (a JSON file, or a generated one) on a served repository and print the ranking."""
    from compiler.core.contract import save_request
    from compiler.serving.client import ScoringClient

    client = ScoringClient(args.url, args.protocol)
    inputs = score_request(args, client.contract)
    if args.save_request is not None:
        save_request(args.save_request, inputs)
    print(client.rank(inputs, args.user_id).table(args.top))  # the ranking is this command's output, not a log line
    return 0


def score_request(args, contract) -> dict:
    """The request to score under the server's contract: --request's file, or one generated at --history-length and
    --candidates."""
    from compiler.core.contract import RequestError, load_request
    from compiler.stca.data import contract_requests

    if args.request is None:
        return contract_requests(contract, [args.history_length], args.candidates, args.seed)[0]
    try:
        return load_request(args.request, contract)
    except RequestError as e:
        raise CompilerError(str(e)) from e


def _score_parser(sub) -> None:
    sc = sub.add_parser("score", help=cmd_score.__doc__, description=cmd_score.__doc__)
    sc.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server (HTTP port, or gRPC port with --protocol grpc)")
    sc.add_argument("--protocol", choices=["http", "grpc"], default="http")
    sc.add_argument("--request", type=Path, help="request JSON: {input name: list}; default: a generated request")
    sc.add_argument("--history-length", type=int, default=2_000, help="generated request: history length L")
    sc.add_argument("--candidates", type=int, default=128, help="generated request: candidates N")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--save-request", type=Path, help="also write the request sent as JSON")
    sc.add_argument("--top", type=int, default=10)
    sc.add_argument("--user-id", help="the routing key sent with the request (a proxy keeps each user on one replica; "
                                      "default: a hash of the request's user inputs)")
    sc.set_defaults(handler=cmd_score)

# -------------------------------------------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    """Benchmark with perf_analyzer: the split ensemble against fused, point-wise and PyTorch-eager baselines (STCA's, or
    your own model's with --onnx/--exported)."""
    from compiler.measure.bench import run

    log.info("bench: results in %s", run(bench_config(args)))
    return 0


def bench_config(args):
    """The bench arguments as a compiler.measure.bench.BenchConfig."""
    from compiler.measure.bench import BenchConfig, RepeatedConfig
    from compiler.stca.data import RepeatedUsers

    repeated = RepeatedConfig(RepeatedUsers(users=args.repeated_users, visits=args.repeated_visits), concurrency=args.concurrency)
    return BenchConfig(name=args.name, checkpoint=args.checkpoint, preset=args.preset, user_model=user_model_spec(args),
                       tune=not args.no_tune, suites=args.suites, repeated=repeated, precisions=args.precisions,
                       models=args.models, histories=args.histories, candidates=args.candidates, concurrency=args.concurrency,
                       window_requests=args.window_requests, cell_budget_s=args.cell_budget, protocol=args.protocol,
                       max_history=args.max_history, cut_dtype=args.cut_dtype, out=args.out)


def _bench_parser(sub) -> None:
    be = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    be.add_argument("--name", default="demo-cpu", help="results go to <out>/<name>/ (default demo-cpu)")
    be.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    be.add_argument("--checkpoint", type=Path, help="default: the demo model")
    be.add_argument("--preset", help="benchmark an untrained seeded model of a named size instead (e.g. medium)")
    be.add_argument("--no-tune", action="store_true", help="keep the build's thread budget instead of measuring the best one")
    be.add_argument("--precisions", type=names, default="fp32,int8")
    be.add_argument("--models", type=names, default=",".join((ENSEMBLE, *BASELINES)))
    be.add_argument("--histories", type=int_list, default="512,2000,10000", help="L values of the sweep")
    be.add_argument("--candidates", type=int_list, default="32,128,512", help="N values of the sweep")
    be.add_argument("--concurrency", type=int_list, default="1,2,4")
    be.add_argument("--window-requests", type=int, default=12, help="perf_analyzer requests per measurement window")
    be.add_argument("--cell-budget", type=float, default=150.0, help="seconds a cell may take; slower cells are dropped")
    be.add_argument("--protocol", choices=["http", "grpc"], default="http")
    be.add_argument("--max-history", type=int)
    be.add_argument("--cut-dtype", choices=["fp32", "fp16"], help="the builds' cut dtype (default: as build --cut-dtype)")
    be.add_argument("--suites", type=names, default="grid,response_cache,attention,repeated_users",
                    help="what to measure (default: all): grid (every model x L x N and the mixed load), response_cache, "
                         "attention (cost model against measurement), repeated_users (the history row cache)")
    be.add_argument("--repeated-users", type=int, default=8, help="repeated_users: fresh users per concurrency level (default 8)")
    be.add_argument("--repeated-visits", type=int, default=12, help="repeated_users: requests per user (default 12)")
    add_user_model_arguments(be)
    be.set_defaults(handler=cmd_bench)

# --------------------------------------------------------------------------------------------------------- demo, docs


def cmd_demo(args) -> int:
    """The whole loop: build the demo model, serve it, score a sample request, stop the server."""
    from compiler.demo import run_demo

    run_demo(**demo_config(args))  # run_demo logs the ranking it scored
    return 0


def demo_config(args) -> dict:
    """The keyword arguments of compiler.demo.run_demo."""
    return {"out": args.out, "checkpoint": args.checkpoint}


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    d.add_argument("--out", type=Path, default=Path("triton_repo"))
    d.add_argument("--checkpoint", type=Path, help="default: the trained demo model")
    d.set_defaults(handler=cmd_demo)


def cmd_docs(args) -> int:
    """Rewrite the measured tables in the docs from the benchmarks' results.json files (--check: only compare)."""
    from compiler.measure.docs_tables import regenerate

    cfg = docs_config(args)
    changed = regenerate(cfg["root"], check=cfg["check"])
    if cfg["check"] and changed:
        log.error("docs: %d file(s) differ from their results.json (python -m compiler docs rewrites them): %s",
                  len(changed), ", ".join(map(str, changed)))
        return 1
    if changed:
        log.info("docs: %d file(s) rewritten: %s", len(changed), ", ".join(map(str, changed)))
    else:
        log.info("docs: every table matches its results.json")
    return 0


def docs_config(args) -> dict:
    """The keyword arguments of compiler.measure.docs_tables.regenerate."""
    return {"root": args.root if args.root is not None else Path.cwd(), "check": args.check}


def _docs_parser(sub) -> None:
    dc = sub.add_parser("docs", help=cmd_docs.__doc__, description=cmd_docs.__doc__)
    dc.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 and name the docs that differ from their results")
    dc.add_argument("--root", type=Path,
                    help="the checkout whose docs and benchmark results are read (default: the current directory)")
    dc.set_defaults(handler=cmd_docs)

# --------------------------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compiler", description="Compile long-history ranking models (STCA, or your own "
                                "ONNX file or ExportedProgram) into a split Triton ensemble.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_build_parser, _tune_parser, _cut_parser, _calibrate_parser, _train_parser, _serve_parser, _score_parser,
                _bench_parser, _demo_parser, _docs_parser):
        add(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    configure(args.verbose)
    try:
        return args.handler(args)
    except CompilerError as e:
        log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
