"""Offload to llama.cpp RPC workers on 127.0.0.1 (`mixtral-desk rpc-worker` in its own process): a real second
device on a CPU-only machine, with real out-of-memory when a worker's address space is capped."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.errors import DeskError
from app.core.planning.fit import device_for, plan_file
from app.core.planning.planner import MIB, PlanSettings, buffers_by_device
from app.core.planning.rpc_workers import RpcWorkerError, parse_endpoints, probe_worker
from app.core.prompts import Message
from app.core.runtime import llama_log
from app.core.runtime.devices import connect_workers, rpc_supported
from app.core.runtime.host import EngineHost
from app.core.runtime.native import NativeContext, NativeModel
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings

pytestmark = pytest.mark.skipif(
    not rpc_supported(),
    reason="llama.cpp here was built without RPC: reinstall it with CMAKE_ARGS=-DGGML_RPC=on to run the offload tests",
)
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=24)
Worker = Callable[..., str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_worker_pids: dict[str, int] = {}


@pytest.fixture
def rpc_worker() -> Iterator[Worker]:
    """Starts `mixtral-desk rpc-worker` processes; returns each one's address once it listens."""
    started: list[subprocess.Popen[str]] = []

    def start(*options: str) -> str:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "rpc-worker", "--port", str(port), "--threads", "1", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        for line in process.stdout:  # the worker says which transport it serves on once it is about to listen
            if "transport" in line:
                break
        else:
            pytest.fail(f"the RPC worker did not start (exit {process.wait()})")
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # it prints that line just before it starts listening: wait for the port to open
            try:
                probe_worker(address, timeout=30)
                _worker_pids[address] = process.pid
                return address
            except RpcWorkerError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.02)

    yield start
    for process in started:
        process.kill()
        process.wait()
    _worker_pids.clear()


def _cap_address_space(address: str, process_headroom: int) -> None:
    """Cap a running worker's address space ``process_headroom`` bytes above what it uses now."""
    pid = _worker_pids[address]
    with open(f"/proc/{pid}/statm") as handle:
        used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.prlimit(pid, resource.RLIMIT_AS, (used + process_headroom, used + process_headroom))


def _greedy_text(host: EngineHost, settings: LoadSettings) -> tuple[str, tuple[str, ...], int]:
    info = host.load(settings)
    text = host.generate(GenerationRequest((Message("user", "Tell me about the sea."),), GREEDY)).run_to_end()
    return text, info.notes, info.n_gpu_layers


def test_a_worker_answers_with_its_memory_and_bad_addresses_are_named(rpc_worker: Worker) -> None:
    address = rpc_worker("--mem", "300MiB")
    worker = probe_worker(address)
    assert worker.version.startswith("7.")
    assert worker.devices[0].total_bytes == 300 * MIB
    assert 290 * MIB < worker.devices[0].free_bytes <= 300 * MIB
    with pytest.raises(RpcWorkerError, match=re.escape("No RPC worker answers at 127.0.0.1:")):
        probe_worker(f"127.0.0.1:{_free_port()}")
    with pytest.raises(RpcWorkerError, match="not a worker address"):
        parse_endpoints("127.0.0.1:99999")
    assert parse_endpoints("box, box:1234,box") == ("box:50052", "box:1234")


def test_full_offload_to_a_worker_writes_the_same_text_as_the_cpu(
    tiny_v1: dict[str, Path], rpc_worker: Worker, host: EngineHost
) -> None:
    address = rpc_worker()
    model = str(tiny_v1["Q4_K_M"])
    on_cpu, _, cpu_layers = _greedy_text(host, LoadSettings(model, n_ctx=512, n_parallel=1))
    offloaded, notes, layers = _greedy_text(host, LoadSettings(model, n_ctx=512, n_parallel=1, rpc_workers=(address,)))
    assert (cpu_layers, layers) == (0, 3)
    assert offloaded == on_cpu and len(on_cpu) > 10
    assert any(f"3 on RPC {address}" in note for note in notes)


@pytest.mark.parametrize("gpu_layers", [3, 2, 1])
def test_the_plan_matches_what_llama_cpp_puts_on_the_worker(
    tiny_v1: dict[str, Path], rpc_worker: Worker, gpu_layers: int
) -> None:
    address = rpc_worker()
    path = tiny_v1["Q4_K_M"]
    devices, workers = connect_workers([address])
    plan = plan_file(path, device_for(workers=workers), PlanSettings(512, n_parallel=1, gpu_layers=gpu_layers))
    assert plan.layer_split == (gpu_layers,)
    with llama_log.capture() as lines:
        model = NativeModel(
            str(path), n_gpu_layers=gpu_layers, devices=[d.handle for d in devices], layer_split=plan.layer_split
        )
        context = NativeContext(model, n_ctx=512, n_batch=512, n_threads=1)
    context.close()
    model.close()
    reported = {"weights": 0, "kv": 0, "compute": 0, **buffers_by_device(lines)[f"RPC0[{address}]"]}
    planned = plan.placements[0].memory
    for kind, value in (("weights", planned.weights), ("kv", planned.kv_cache), ("compute", planned.compute)):
        assert abs(value - reported[kind]) <= max(0.1 * reported[kind], 32 * MIB), (kind, value, reported)
    assert reported["weights"] > 0 and abs(planned.weights - reported["weights"]) < 0.02 * MIB


def test_a_worker_that_runs_out_of_memory_gets_fewer_layers_and_the_user_is_told(
    tiny_v1: dict[str, Path], rpc_worker: Worker, host: EngineHost
) -> None:
    address = rpc_worker("--mem", "200MiB")  # says 200 MiB ...
    _cap_address_space(address, 30 * MIB)  # ... but can allocate 30: the output layer's 63 MiB buffer fails
    text, notes, layers = _greedy_text(
        host, LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, n_parallel=1, rpc_workers=(address,))
    )
    assert layers < 3
    assert any(f"ran out of memory on the RPC worker at {address}" in note for note in notes)
    assert text
    host.close()  # the loaded model holds the worker's one connection
    assert probe_worker(address).endpoint == address  # the worker is still up


def test_a_worker_that_is_not_there_is_a_clear_error_not_a_crash(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(DeskError, match=re.escape(f"No RPC worker answers at {address}")):
        host.load(LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, rpc_workers=(address,)))
