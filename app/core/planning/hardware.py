"""What this machine has: GPUs (NVML on CUDA, Metal's working-set limit on Apple Silicon), RAM, and the
backend the installed llama.cpp was built with. Every probe fails soft: no GPU is a normal answer, and a
probe that breaks leaves a note instead of an exception.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.core.planning.rpc_workers import RpcWorker, RpcWorkerError, last_answer, probe_worker

GIB = 1024**3

# Peak memory bandwidth in GB/s, for the speed estimate (public spec sheets). Longest key that matches wins.
GPU_BANDWIDTH_GBPS: dict[str, float] = {
    "RTX 4090": 1008,
    "RTX 4080": 717,
    "RTX 4070 Ti": 504,
    "RTX 4060 Ti": 288,
    "RTX 3090": 936,
    "RTX 3090 Ti": 1008,
    "RTX 3080": 760,
    "RTX 5090": 1792,
    "RTX 5080": 960,
    "RTX A6000": 768,
    "RTX 6000 Ada": 960,
    "A100": 1555,
    "A100-SXM4-80GB": 2039,
    "H100": 3350,
    "H100 PCIe": 2000,
    "H200": 4800,
    "L40S": 864,
    "L4": 300,
    "T4": 320,
    "Apple M1": 68,
    "Apple M1 Pro": 200,
    "Apple M1 Max": 400,
    "Apple M1 Ultra": 800,
    "Apple M2": 100,
    "Apple M2 Pro": 200,
    "Apple M2 Max": 400,
    "Apple M2 Ultra": 800,
    "Apple M3": 100,
    "Apple M3 Pro": 150,
    "Apple M3 Max": 400,
    "Apple M3 Ultra": 819,
    "Apple M4": 120,
    "Apple M4 Pro": 273,
    "Apple M4 Max": 546,
}
DEFAULT_GPU_BANDWIDTH_GBPS = 500.0


def gpu_bandwidth_gbps(name: str) -> tuple[float, bool]:
    """Peak bandwidth for a GPU name and whether it was known (False: a stated default)."""
    matches = [key for key in GPU_BANDWIDTH_GBPS if key.lower() in name.lower()]
    if not matches:
        return DEFAULT_GPU_BANDWIDTH_GBPS, False
    return GPU_BANDWIDTH_GBPS[max(matches, key=len)], True


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the backend sees it. For Metal, ``total`` is the working-set limit, not all of RAM."""

    index: int
    name: str
    backend: str  # "cuda" or "metal"
    total_bytes: int
    free_bytes: int
    bandwidth_gbps: float
    bandwidth_known: bool


@dataclass(frozen=True)
class HardwareReport:
    """Everything the planner needs to know about this machine."""

    system: str
    machine: str
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GpuInfo, ...]
    llama_backend: str  # "cuda", "metal", "vulkan", "cpu", ... as built
    llama_supports_gpu_offload: bool
    llama_system_info: str
    llama_cpp_version: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    llama_supports_rpc: bool = False
    rpc_workers: tuple[RpcWorker, ...] = ()  # the workers asked for that answered (see notes for the others)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def metal_working_set_limit(ram_total: int, recommended: int | None = None) -> int:
    """Metal's usable GPU memory: ``recommendedMaxWorkingSetSize`` when known, else macOS's default share
    of unified memory (2/3 up to 36 GiB of RAM, 3/4 above)."""
    if recommended:
        return recommended
    return ram_total * 2 // 3 if ram_total <= 36 * GIB else ram_total * 3 // 4


def probe_nvml() -> tuple[list[GpuInfo], list[str]]:
    """CUDA GPUs through NVML; an empty list (and a note) when there is no driver or no nvidia-ml-py."""
    notes: list[str] = []
    try:
        import pynvml
    except ImportError:
        return [], ["nvidia-ml-py is not installed: NVIDIA GPUs cannot be listed."]
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], [f"No NVIDIA driver found ({err})."]
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            bandwidth, known = gpu_bandwidth_gbps(name)
            gpus.append(GpuInfo(index, name, "cuda", int(memory.total), int(memory.free), bandwidth, known))
    except Exception as err:
        notes.append(f"NVML stopped answering while listing GPUs ({err}).")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as err:
            notes.append(f"NVML did not shut down cleanly ({err}).")
    return gpus, notes


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def probe_metal(ram_total: int, ram_available: int) -> tuple[list[GpuInfo], list[str]]:
    """Apple Silicon's GPU: unified memory capped by Metal's working-set limit."""
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return [], []
    notes: list[str] = []
    recommended = None
    try:
        import Metal  # pyobjc-framework-Metal, optional

        device = Metal.MTLCreateSystemDefaultDevice()
        recommended = int(device.recommendedMaxWorkingSetSize())
    except Exception:
        notes.append("Metal's working-set limit was estimated from RAM (install pyobjc-framework-Metal to read it).")
    name = _sysctl("machdep.cpu.brand_string") or "Apple Silicon"
    limit = metal_working_set_limit(ram_total, recommended)
    bandwidth, known = gpu_bandwidth_gbps(name)
    return [GpuInfo(0, name, "metal", limit, min(limit, ram_available), bandwidth, known)], notes


_GPU_BACKENDS = ("cuda", "metal", "vulkan", "hip", "musa", "sycl", "opencl", "rpc")


def _llama_cpp_libraries() -> tuple[set[str] | None, str]:
    """The ggml backends found among the installed llama-cpp-python's library files ("cpu", "cuda", "rpc",
    ...), and its version (None, "" when it is not installed); read from the files, without loading llama.cpp
    (only the engine host does that)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None, ""
    found = set()
    folder = Path(spec.origin).parent / "lib"
    for library in [*folder.glob("*ggml-*"), *folder.glob("*ggml_*")]:
        name = library.name.split(".")[0].removeprefix("lib").removeprefix("ggml-").removeprefix("ggml_")
        found.add(name.lower())
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return found, version


def llama_build_info() -> tuple[str, bool, str, str]:
    """(backend, supports GPU offload, ggml backends found, version) of the installed llama-cpp-python."""
    found, version = _llama_cpp_libraries()
    if found is None:
        return "missing", False, "", ""
    gpu = [name for name in _GPU_BACKENDS if name in found and name != "rpc"]
    backend = {"hip": "rocm"}.get(gpu[0], gpu[0]) if gpu else "cpu"
    listed = ", ".join(sorted(found - {"base"})) or "none"
    return backend, bool(gpu), f"ggml backends: {listed}", version


def probe(rpc_endpoints: Sequence[str] = ()) -> HardwareReport:
    """Probe this machine and the RPC workers named. Never raises for missing hardware or a worker that does not
    answer; see ``notes``."""
    import psutil

    memory = psutil.virtual_memory()
    gpus, notes = probe_nvml()
    metal, metal_notes = probe_metal(int(memory.total), int(memory.available))
    gpus += metal
    notes += metal_notes
    backend, offload, info, version = llama_build_info()
    if gpus and not offload:
        notes.append(
            "This llama.cpp build cannot use the GPU: reinstall llama-cpp-python with CMAKE_ARGS for CUDA or Metal."
        )
    workers = []
    for endpoint in rpc_endpoints:
        try:
            workers.append(probe_worker(endpoint))
        except RpcWorkerError as err:
            earlier = last_answer(endpoint)
            if earlier is None:
                notes.append(str(err))
            else:  # busy serving the model this app loaded on it: its memory as it was before that load
                workers.append(earlier)
                notes.append(f"The RPC worker at {earlier.endpoint} is in use; its memory is as it was before loading.")
    rpc = "rpc" in (_llama_cpp_libraries()[0] or set())
    if rpc_endpoints and not rpc:
        notes.append(
            "This llama.cpp build cannot use RPC workers: reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_RPC=on."
        )
    return HardwareReport(
        system=platform.system(),
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        ram_total_bytes=int(memory.total),
        ram_available_bytes=int(memory.available),
        gpus=tuple(gpus),
        llama_backend=backend,
        llama_supports_gpu_offload=offload,
        llama_system_info=info,
        llama_cpp_version=version,
        notes=tuple(notes),
        llama_supports_rpc=rpc,
        rpc_workers=tuple(workers),
    )


def measure_ram_bandwidth_gbps(size_mib: int = 256, repeats: int = 3) -> float:
    """Rough memory copy bandwidth (read + write) in GB/s: the best of a few large array copies."""
    import numpy as np

    source = np.ones(size_mib * 1024 * 1024 // 8, dtype=np.float64)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9
