"""llama.cpp's devices, through ctypes (llama-cpp-python does not bind them): this machine's GPUs, RPC workers'
devices on other machines (or other processes here), and the RPC worker that serves this machine's CPU memory
to another.

The RPC client in llama.cpp ends the process when a worker cannot be reached, so every worker is first asked
over the wire protocol in Python (:func:`app.core.planning.rpc_workers.probe_worker`) and only then handed to
llama.cpp.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from app.core.errors import DeskError
from app.core.planning.rpc_workers import RpcWorker, probe_worker
from app.core.runtime.native import init_backend

_DEVICE_TYPE_CPU = 0
_DEVICE_TYPE_GPU = 1
_DEVICE_TYPE_IGPU = 2
_LIB_DIR = Path(llama_cpp.__file__).parent / "lib"
# headroom above a worker's memory limit for its thread stacks and allocator (one malloc arena, see below)
WORKER_OVERHEAD_BYTES = 64 * 1024**2
_M_ARENA_MAX = -8  # glibc mallopt: each thread's arena would otherwise reserve 64 MiB of address space


class RpcUnsupportedError(DeskError):
    """The installed llama.cpp was built without RPC."""

    def __init__(self) -> None:
        super().__init__(
            "This llama.cpp was built without RPC support. Reinstall it with RPC on: "
            'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir llama-cpp-python '
            "(add your GPU backend's flag too, e.g. -DGGML_CUDA=on)."
        )


def _library(stem: str) -> ctypes.CDLL | None:
    """The copy of a ggml library that llama.cpp itself loaded. Wheels hold the library under several names as
    separate files (lib.so, lib.so.0, ...); loading another name would load a second copy with its own globals
    (backend registry, abort callback), so the name llama.cpp's libraries ask for comes first."""
    for name in (f"lib{stem}.so.0", f"lib{stem}.0.dylib", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        path = _LIB_DIR / name
        if path.exists():
            return ctypes.CDLL(str(path))
    return None


_P = ctypes.c_void_p
_SIZE = ctypes.c_size_t
# (library, function, argument types, result type)
_SIGNATURES: tuple[tuple[str, str, list[Any], Any], ...] = (
    ("ggml-base", "ggml_backend_reg_dev_count", [_P], _SIZE),
    ("ggml-base", "ggml_backend_reg_dev_get", [_P, _SIZE], _P),
    ("ggml-base", "ggml_backend_dev_name", [_P], ctypes.c_char_p),
    ("ggml-base", "ggml_backend_dev_type", [_P], ctypes.c_int),
    ("ggml-base", "ggml_backend_dev_memory", [_P, ctypes.POINTER(_SIZE), ctypes.POINTER(_SIZE)], None),
    ("ggml-base", "ggml_backend_cpu_buffer_type", [], _P),
    ("ggml-base", "ggml_set_abort_callback", [_P], _P),
    ("ggml", "ggml_backend_dev_count", [], _SIZE),
    ("ggml", "ggml_backend_dev_get", [_SIZE], _P),
    ("ggml", "ggml_backend_dev_by_type", [ctypes.c_int], _P),
    ("ggml-rpc", "ggml_backend_rpc_add_server", [ctypes.c_char_p], _P),
    (
        "ggml-rpc",
        "ggml_backend_rpc_start_server",
        [ctypes.c_char_p, ctypes.c_char_p, _SIZE, _SIZE, ctypes.POINTER(_P)],
        None,
    ),
)


class _Ggml:
    """The few ggml functions this module needs, with their C signatures, as attributes named without the
    ``ggml_backend_`` prefix (``dev_count``, ``rpc_add_server``, ...). ``rpc`` is False on a build without RPC."""

    def __init__(self) -> None:
        libraries = {stem: _library(stem) for stem in ("ggml", "ggml-base", "ggml-rpc")}
        if libraries["ggml"] is None or libraries["ggml-base"] is None:
            raise DeskError(f"llama.cpp's ggml libraries are missing from {_LIB_DIR}; reinstall llama-cpp-python.")
        self.rpc = libraries["ggml-rpc"] is not None
        for stem, name, argtypes, restype in _SIGNATURES:
            library = libraries[stem]
            if library is not None:
                function = getattr(library, name)
                function.argtypes, function.restype = argtypes, restype
                setattr(self, name.removeprefix("ggml_backend_").removeprefix("ggml_"), function)

    def __getattr__(self, name: str) -> Any:  # only reached for an RPC function on a build without RPC
        raise RpcUnsupportedError()


_ggml: _Ggml | None = None


def _api() -> _Ggml:
    global _ggml
    if _ggml is None:
        init_backend()
        _ggml = _Ggml()
    return _ggml


_AbortCallback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_loss_handlers: dict[int, Callable[[str], None]] = {}
_abort_callback: Any = None  # kept alive for the life of the process once installed


def watch_device_loss(owner: object, handler: Callable[[str], None] | None) -> None:
    """While ``owner`` has a model on RPC workers, call ``handler(message)`` instead of ending the process when
    a worker stops answering (``None`` stops watching). llama.cpp's RPC client has no other way to fail: the
    call that was waiting on the worker never returns, so the handler must give up that thread and everything
    llama.cpp held for the model (freeing it would ask the dead worker again), and serve on with a new thread.
    The handler runs on llama.cpp's RPC thread, while the owner's own thread waits on it."""
    if handler is None:
        _loss_handlers.pop(id(owner), None)
    else:
        _loss_handlers[id(owner)] = handler


def _on_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", errors="replace").strip()
    handlers = list(_loss_handlers.values())
    if "RPC" not in text or not handlers:
        sys.stderr.write(f"{text}\n")
        return  # ggml ends the process, as it would without us
    _loss_handlers.clear()
    for handler in handlers:
        handler(text)
    threading.Event().wait()  # llama.cpp's RPC thread stops here; returning would let ggml end the process


def _catch_aborts(api: _Ggml) -> None:
    """Route ggml's aborts through :func:`_on_abort` (once per process)."""
    global _abort_callback
    if _abort_callback is None:
        _abort_callback = _AbortCallback(_on_abort)
        api.set_abort_callback(ctypes.cast(_abort_callback, ctypes.c_void_p))


def rpc_supported() -> bool:
    """Whether the installed llama.cpp can use RPC workers."""
    return _api().rpc


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp can offload to a GPU of this machine (llama.cpp's own check also says yes for a
    CPU build with RPC, whose devices are only the workers the user names)."""
    return bool(llama_cpp.llama_supports_gpu_offload()) and bool(local_gpus())


def expert_overrides(cpu_moe: int) -> list[tuple[str, int]]:
    """llama.cpp buffer overrides that keep the expert matrices of layers ``0 .. cpu_moe - 1`` in this machine's
    RAM wherever the rest of those layers goes (what llama.cpp's ``--n-cpu-moe`` does)."""
    if cpu_moe <= 0:
        return []
    layers = "|".join(str(layer) for layer in range(cpu_moe))
    return [(rf"^blk\.({layers})\.ffn_(up|down|gate)_exps\.", int(_api().cpu_buffer_type()))]


@dataclass(frozen=True)
class OffloadDevice:
    """A llama.cpp device a model can be placed on: a local GPU or one device of an RPC worker."""

    handle: int  # ggml_backend_dev_t
    name: str  # llama.cpp's name: "CUDA0", "Metal", "RPC0", ...
    endpoint: str  # the worker's address; "" for a local device


def local_gpus() -> list[OffloadDevice]:
    """This machine's GPU devices as llama.cpp lists them."""
    api = _api()
    found = []
    for index in range(api.dev_count()):
        handle = api.dev_get(index)
        if api.dev_type(handle) in (_DEVICE_TYPE_GPU, _DEVICE_TYPE_IGPU) and not (
            api.dev_name(handle) or b""
        ).startswith(b"RPC"):
            found.append(OffloadDevice(int(handle), (api.dev_name(handle) or b"").decode(), ""))
    return found


def connect_workers(endpoints: Sequence[str], *, timeout: float = 3.0) -> tuple[list[OffloadDevice], list[RpcWorker]]:
    """Ask each worker over the wire (a clear error if one does not answer), then add it to llama.cpp.

    Returns the devices in llama.cpp's order for offloading (workers first, in the order given) and the workers'
    answers (free and total memory of each device).

    Raises:
        RpcUnsupportedError: a build without RPC.
        RpcWorkerError: a worker that is unreachable, busy or of another version.
    """
    if not endpoints:
        return [], []
    api = _api()
    if not api.rpc:
        raise RpcUnsupportedError()
    _catch_aborts(api)
    devices: list[OffloadDevice] = []
    workers = []
    for endpoint in endpoints:
        worker = probe_worker(endpoint, timeout=timeout)
        workers.append(worker)
        registry = api.rpc_add_server(worker.endpoint.encode())
        if not registry:
            raise DeskError(f"llama.cpp could not add the RPC worker at {worker.endpoint}.")
        for index in range(api.reg_dev_count(registry)):
            handle = api.reg_dev_get(registry, index)
            devices.append(OffloadDevice(int(handle), (api.dev_name(handle) or b"").decode(), worker.endpoint))
    return devices, workers


# --- the worker ----------------------------------------------------------------------------------------------


class _DeviceInterface(ctypes.Structure):
    _fields_ = [("get_name", ctypes.c_void_p), ("get_description", ctypes.c_void_p), ("get_memory", ctypes.c_void_p)]


_GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def serve_worker(host: str, port: int, *, threads: int, memory_limit: int | None, cache_dir: str | None) -> None:
    """Serve this machine's CPU as an RPC device until the process is stopped (this call does not return).

    With ``memory_limit`` the worker reports that much memory (less what it holds) to clients, and the process's
    address space is capped a little above it, so going past it is a real allocation failure on the worker.
    """
    api = _api()
    if not api.rpc:
        raise RpcUnsupportedError()
    cpu = api.dev_by_type(_DEVICE_TYPE_CPU)
    if not cpu:
        raise DeskError("llama.cpp has no CPU device to serve.")
    if memory_limit is not None:
        if not sys.platform.startswith("linux"):
            raise DeskError("--mem is only enforced on Linux; run the worker without it here.")
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
        start = _address_space_bytes()
        cap = start + WORKER_OVERHEAD_BYTES + threads * 8 * 1024**2 + memory_limit  # + thread stacks
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        def report(_device: int, free: ctypes._Pointer, total: ctypes._Pointer) -> None:  # type: ignore[type-arg]
            total[0] = memory_limit
            free[0] = max(0, memory_limit - max(0, _address_space_bytes() - start))

        callback = _GET_MEMORY(report)  # lives as long as this call, which serves until the process ends
        # the CPU device is a static struct whose interface starts with get_name, get_description, get_memory:
        # point its get_memory at ours, in this worker process only
        interface = _DeviceInterface.from_address(cpu)
        interface.get_memory = ctypes.cast(callback, ctypes.c_void_p).value
    devices = (ctypes.c_void_p * 1)(cpu)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    api.rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices)
