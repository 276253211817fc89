"""The machine a build or a benchmark ran on, and the versions it ran with: every recorded number names both."""

import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path


def versions() -> dict[str, str]:
    """The versions of the packages a build or a benchmark ran with (and the tritonserver the wheel ships)."""
    found = {"python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "nvidia-modelopt", "tritonclient", "nvidia-pytriton", "tensorrt"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if "nvidia-pytriton" in found:
        found["tritonserver"] = "2.51.0 (in nvidia-pytriton 0.7.0)" if found["nvidia-pytriton"] == "0.7.0" else "see nvidia-pytriton"
    return found


# The ISA extensions ONNX Runtime's and PyTorch's CPU kernels choose between; the CPU model alone does not say
# (a virtual machine may hide some), and benchmark numbers are comparable only between equal sets.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


@dataclass(frozen=True)
class Machine:
    platform: str
    processor: str
    cpu_model: str
    isa: tuple[str, ...]  # the ISA_FLAGS this CPU has, in ISA_FLAGS' order
    cpus: int

    def describe(self) -> str:
        return f"{self.cpu_model} ({' '.join(self.isa) or 'no listed ISA extension'}), {self.cpus} CPUs"

    def to_dict(self) -> dict:
        return {**asdict(self), "isa": list(self.isa)}

    @classmethod
    def from_dict(cls, d: dict) -> "Machine":
        return cls(d["platform"], d["processor"], d["cpu_model"], tuple(d["isa"]), d["cpus"])


def machine() -> Machine:
    """This machine, from /proc/cpuinfo where there is one."""
    processor = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first core's entries stand for all
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux: the processor string is all there is
        pass
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return Machine(platform.platform(), processor, fields.get("model name", processor),
                   tuple(f for f in ISA_FLAGS if f in flags), os.cpu_count() or 1)
