"""Engines stage: ONNX graphs -> TensorRT plans, on hosts where TensorRT and a GPU exist.

Precision is already in the ONNX (fp16-typed graphs, int8 Q/DQ): the network is strongly typed, which
TensorRT 11 always is (its STRONGLY_TYPED flag is kept and ignored) and TensorRT 10 is with that flag, so
the same call builds on both and no FP16/INT8 builder flag or calibrator is used. Each optimization
profile gives every symbolic dim (L, N) a min/opt/max; a persistent timing cache makes rebuilds fast.

Nothing here runs on the CPU-only machines this project is developed on: `tensorrt_version()` is None
there, `--target tensorrt` stops with that reason, and the engine tests skip.
"""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from compiler.core.errors import CompilerError
from compiler.core.log import log

NOT_INSTALLED = ("TensorRT is not installed here (pip install tensorrt on a GPU host, or build inside an NGC "
                 "TensorRT/Triton container); use --target python or onnxruntime, or --target auto")


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the Python bindings installed without TensorRT's libraries
        return None
    return trt.__version__


def require_tensorrt():
    if tensorrt_version() is None:
        raise CompilerError(f"target tensorrt: {NOT_INSTALLED}")
    import tensorrt as trt

    return trt


def gpu_info() -> dict | None:
    """Name and compute capability of GPU 0, or None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, capability = (part.strip() for part in out.stdout.splitlines()[0].split(","))
    return {"name": name, "compute_capability": capability}


def resolve_target(target: str) -> str:
    """`auto`: tensorrt where TensorRT and a GPU are present, else the embedded python target."""
    if target != "auto":
        return target
    chosen = "tensorrt" if tensorrt_version() and gpu_info() else "python"
    log.info("target auto: %s (TensorRT %s, GPU %s)", chosen, tensorrt_version() or "absent", (gpu_info() or {}).get("name", "absent"))
    return chosen


@dataclass(frozen=True)
class Profile:
    """min/opt/max of each symbolic dim, e.g. {"L": (1, 2000, 10000), "N": (1, 256, 1024)}."""

    dims: dict

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """"L=1:2000:10000,N=1:256:1024" -> Profile."""
        dims = {}
        for part in text.split(","):
            try:
                name, values = part.split("=")
                lo, opt, hi = (int(v) for v in values.split(":"))
            except ValueError as e:
                raise CompilerError(f"profile {text!r}: write DIM=MIN:OPT:MAX,... e.g. L=1:2000:10000,N=1:256:1024") from e
            if not 1 <= lo <= opt <= hi:
                raise CompilerError(f"profile {text!r}: {name} needs 1 <= min <= opt <= max")
            dims[name.strip()] = (lo, opt, hi)
        return cls(dims)

    def shapes(self, value: onnx.ValueInfoProto) -> tuple[tuple, tuple, tuple]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        missing = [d for d in dims if isinstance(d, str) and d not in self.dims]
        if missing:
            raise CompilerError(f"profile: input {value.name} has dim(s) {missing} the profile does not give")
        return tuple(tuple(self.dims[d][k] if isinstance(d, str) else d for d in dims) for k in range(3))


@dataclass(frozen=True)
class EngineConfig:
    profiles: tuple[Profile, ...] = ()  # empty: one profile over the served limits
    timing_cache: Path | None = None  # default: ~/.cache/stca-compiler/tensorrt-<version>.timing-cache
    workspace_bytes: int = 8 << 30
    optimization_level: int = 3  # TensorRT's default; 5 searches longer

    def resolved_profiles(self, max_history: int, max_candidates: int) -> tuple[Profile, ...]:
        if self.profiles:
            return self.profiles
        return (Profile({"L": (1, min(2_000, max_history), max_history), "N": (1, min(256, max_candidates), max_candidates)}),)


@dataclass(frozen=True)
class Plans:
    plans: dict  # model name -> serialized plan bytes
    details: dict = field(default_factory=dict)  # for the manifest


def build_plans(graphs: dict[str, onnx.ModelProto], profiles: tuple[Profile, ...], cfg: EngineConfig) -> Plans:
    trt = require_tensorrt()
    gpu = gpu_info()
    if gpu is None:
        raise CompilerError("target tensorrt: no GPU is visible (nvidia-smi found none)")
    cache_path = cfg.timing_cache or Path.home() / ".cache" / "stca-compiler" / f"tensorrt-{trt.__version__}.timing-cache"
    plans = {name: _build_one(trt, name, model, profiles, cfg, cache_path) for name, model in graphs.items()}
    details = {"tensorrt": trt.__version__, "gpu": gpu, "timing_cache": str(cache_path),
               "profiles": [p.dims for p in profiles], "plan_bytes": {k: len(v) for k, v in plans.items()}}
    return Plans(plans, details)


def _build_one(trt, name: str, model: onnx.ModelProto, profiles, cfg: EngineConfig, cache_path: Path) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompilerError(f"engines: TensorRT's ONNX parser rejected {name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    config.builder_optimization_level = cfg.optimization_level
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for value in model.graph.input:
            optimization.set_shape(value.name, *profile.shapes(value))
        config.add_optimization_profile(optimization)
    log.info("engines: building %s (%d profile(s); this takes minutes)", name, len(profiles))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompilerError(f"engines: TensorRT could not build {name} (see its warnings above)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TrtGraph:
    """One plan in a TensorRT execution context, with run() like compiler.runtime.ort.OrtGraph (torch CUDA buffers).
    With outputs_on_device, run() returns the CUDA tensors themselves: an encoder's cut stays on the GPU when
    compiler.runtime.ort.SplitRunner hands it to the scorer, as in the served ensemble."""

    def __init__(self, plan: bytes, outputs_on_device: bool = False):
        import torch

        trt = require_tensorrt()
        self.torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: _torch_dtype(torch, trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream()
        self.outputs_on_device = outputs_on_device

    def run_device(self, feeds: dict) -> dict:
        """feeds: name -> torch CUDA tensor (or numpy); returns torch CUDA tensors, without a host copy."""
        torch = self.torch
        inputs = {n: torch.as_tensor(feeds[n]).to("cuda", self.dtypes[n]).contiguous() for n in self.input_names}
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n], device="cuda") for n in self.output_names}
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outputs

    def run(self, feeds: dict) -> dict:
        outputs = self.run_device(feeds)
        return outputs if self.outputs_on_device else {n: t.cpu().numpy() for n, t in outputs.items()}


def _torch_dtype(torch, trt, dtype):
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64, trt.int32: torch.int32,
            trt.bool: torch.bool}[dtype]

