"""Offload to llama.cpp RPC workers on 127.0.0.1 (`mixtral-desk rpc-worker` in its own process): a real second
device on a CPU-only machine, with real out-of-memory when a worker's address space is capped."""

from __future__ import annotations

import os
import re
import resource
import signal
from pathlib import Path

import pytest

from app.core.errors import DeskError
from app.core.planning.planner import MIB, PlanSettings
from app.core.planning.rpc_workers import RpcWorkerError, parse_endpoints, probe_worker
from app.core.prompts import Message
from app.core.runtime import llama_log
from app.core.runtime.devices import rpc_supported
from app.core.runtime.host import EngineHost
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings
from quant.local_workers import free_port
from quant.planner_check import compare_on_workers, format_rows
from tests.conftest import LocalWorkers

pytestmark = pytest.mark.skipif(
    not rpc_supported(),
    reason="llama.cpp here was built without RPC: reinstall it with CMAKE_ARGS=-DGGML_RPC=on to run the offload tests",
)
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=24)


def _cap_address_space(pid: int, process_headroom: int) -> None:
    """Cap a running worker's address space ``process_headroom`` bytes above what it uses now."""
    with open(f"/proc/{pid}/statm") as handle:
        used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.prlimit(pid, resource.RLIMIT_AS, (used + process_headroom, used + process_headroom))


def _greedy_text(host: EngineHost, settings: LoadSettings) -> tuple[str, tuple[str, ...], int]:
    info = host.load(settings)
    text = host.generate(GenerationRequest((Message("user", "Tell me about the sea."),), GREEDY)).run_to_end()
    return text, info.notes, info.n_gpu_layers


def test_a_worker_answers_with_its_memory_and_bad_addresses_are_named(rpc_worker: LocalWorkers) -> None:
    address = rpc_worker("--mem", "300MiB")
    worker = probe_worker(address)
    assert worker.version.startswith("7.")
    assert worker.devices[0].total_bytes == 300 * MIB
    assert 290 * MIB < worker.devices[0].free_bytes <= 300 * MIB
    with pytest.raises(RpcWorkerError, match=re.escape("No RPC worker answers at 127.0.0.1:")):
        probe_worker(f"127.0.0.1:{free_port()}")
    with pytest.raises(RpcWorkerError, match="not a worker address"):
        parse_endpoints("127.0.0.1:99999")
    assert parse_endpoints("box, box:1234,box") == ("box:50052", "box:1234")


def test_full_offload_to_a_worker_writes_the_same_text_as_the_cpu(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
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
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, gpu_layers: int
) -> None:
    address = rpc_worker()
    rows = compare_on_workers(tiny_v1["Q4_K_M"], PlanSettings(512, n_parallel=1), [address], gpu_layers=gpu_layers)
    assert all(row.within_tolerance for row in rows), format_rows(rows)
    weights = next(row for row in rows if row.kind.endswith("weights") and row.kind.startswith("RPC"))
    assert weights.reported > 0 and abs(weights.planned - weights.reported) < 0.02 * MIB


def test_experts_kept_in_ram_write_the_same_text_as_the_cpu(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    address = rpc_worker()
    model = str(tiny_v1["Q4_K_M"])
    on_cpu, _, _ = _greedy_text(host, LoadSettings(model, n_ctx=512, n_parallel=1))
    settings = LoadSettings(model, n_ctx=512, n_parallel=1, rpc_workers=(address,), cpu_moe=1)
    with llama_log.capture() as lines:
        split, notes, layers = _greedy_text(host, settings)
    assert split == on_cpu and layers == 3
    assert (
        host.info is not None and host.info.experts_in_ram == 1 and host.info.placement.endswith("experts of 1 in RAM")
    )
    assert any("the experts of 1 of them kept in RAM" in note for note in notes)
    moved = [line for line in lines if "buffer type overridden to CPU" in line]
    assert len(moved) == 3 and all("blk.0.ffn_" in line for line in moved)  # gate, up and down of layer 0


@pytest.mark.parametrize("cpu_moe", [1, 2])
def test_the_experts_of_n_layers_are_in_ram_as_planned(
    wide_model: Path, rpc_worker: LocalWorkers, cpu_moe: int
) -> None:
    address = rpc_worker()
    rows = compare_on_workers(wide_model, PlanSettings(512, n_parallel=1), [address], cpu_moe=cpu_moe)
    assert all(row.within_tolerance for row in rows), format_rows(rows)
    host_weights = next(row for row in rows if row.kind == "CPU weights")
    device_weights = next(row for row in rows if row.kind.startswith("RPC") and row.kind.endswith("weights"))
    # token embeddings and ~780 MiB of experts per layer here; everything else on the worker
    for row in (host_weights, device_weights):  # llama.cpp logs MiB to two decimals
        assert abs(row.planned - row.reported) < 0.02 * MIB, row
    assert host_weights.reported > cpu_moe * 700 * MIB


@pytest.mark.parametrize(("limits", "split"), [(("1100MiB", "1200MiB"), "1/2"), (("1100MiB", "500MiB"), "1/1")])
def test_two_workers_with_different_limits_hold_what_the_plan_gives_each(
    wide_model: Path, rpc_worker: LocalWorkers, limits: tuple[str, str], split: str
) -> None:
    addresses = [rpc_worker("--mem", limit) for limit in limits]  # a layer needs ~1020 MiB, the output ~150
    rows = compare_on_workers(wide_model, PlanSettings(512, n_parallel=1), addresses)
    assert all(row.within_tolerance for row in rows), format_rows(rows)
    assert all(row.model.endswith(f" {split}") for row in rows)
    devices = {row.kind.split()[0] for row in rows} - {"CPU"}
    assert len(devices) == 2


def test_a_worker_that_runs_out_of_memory_gets_fewer_layers_and_the_user_is_told(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    address = rpc_worker("--mem", "200MiB")  # says 200 MiB ...
    # ... but can allocate 30: the output layer's 63 MiB buffer fails
    _cap_address_space(rpc_worker.pid(address), 30 * MIB)
    text, notes, layers = _greedy_text(
        host, LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, n_parallel=1, rpc_workers=(address,))
    )
    assert layers < 3
    assert any(f"ran out of memory on the RPC worker at {address}" in note for note in notes)
    assert text
    host.close()  # the loaded model holds the worker's one connection
    assert probe_worker(address).endpoint == address  # the worker is still up


def test_a_worker_that_is_not_there_is_a_clear_error_not_a_crash(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(DeskError, match=re.escape(f"No RPC worker answers at {address}")):
        host.load(LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, rpc_workers=(address,)))


def test_tuning_with_a_worker_tries_whole_layers_and_experts_in_ram_and_loads_use_the_fastest(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    from app.core.runtime import bench

    address = rpc_worker()
    settings = LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, rpc_workers=(address,))
    trials: list[dict[str, int]] = []
    best = bench.tune(settings, generate_tokens=8, on_trial=lambda trial, pp, tg: trials.append(trial))
    offloads = {(trial["n_gpu_layers"], trial["cpu_moe"]) for trial in trials}
    assert (3, 0) in offloads and (3, 1) in offloads and (3, 2) in offloads  # whole layers and experts in RAM
    assert best in trials
    info = host.load(settings)
    assert (info.n_gpu_layers, info.experts_in_ram) == (best["n_gpu_layers"], best["cpu_moe"])
    assert any("`bench --tune` found fastest" in note for note in info.notes)


def test_a_worker_that_dies_mid_reply_ends_the_reply_with_a_clear_error_and_the_app_goes_on(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    address = rpc_worker()
    model = str(tiny_v1["Q4_K_M"])
    host.load(LoadSettings(model, n_ctx=2048, n_parallel=1, rpc_workers=(address,)))
    endless = SamplingSettings(temperature=0.0, max_new_tokens=100_000, ignore_eos=True)
    ticket = host.generate(GenerationRequest((Message("user", "Tell me about the sea."),), endless))
    stream = iter(ticket)
    assert next(stream)  # the reply is streaming from the worker ...
    os.kill(rpc_worker.pid(address), signal.SIGKILL)  # ... when its machine goes away
    with pytest.raises(DeskError, match="An offload device stopped answering"):
        for _ in stream:
            pass
    assert host.health().alive and host.info is None and "stopped answering" in host.health().error
    info = host.load(LoadSettings(model, n_ctx=512, n_parallel=1))  # on this machine alone
    assert info.placement == "CPU"
    assert host.generate(GenerationRequest((Message("user", "Hi"),), GREEDY)).run_to_end()


def test_out_of_memory_with_experts_in_ram_keeps_the_experts_of_more_layers_in_ram(
    wide_model: Path, rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    address = rpc_worker("--mem", "2GiB")  # says 2 GiB ...
    # ... can allocate 600 MiB: ~1060 with one layer's experts in RAM, ~200 with both
    _cap_address_space(rpc_worker.pid(address), 600 * MIB)
    info = host.load(LoadSettings(str(wide_model), n_ctx=512, n_parallel=1, rpc_workers=(address,), cpu_moe=1))
    assert info.n_gpu_layers == 3 and info.experts_in_ram == 2
    assert any(
        f"the experts of 1 layer in RAM ran out of memory on the RPC worker at {address}" in n for n in info.notes
    )
    assert host.generate(GenerationRequest((Message("user", "Hi"),), GREEDY)).run_to_end() is not None


def test_the_full_size_8x7b_runs_with_its_experts_in_ram_and_the_rest_on_a_capped_worker(
    tmp_path: Path, rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    """Mixtral 8x7B Q2_K at its real size (17.3 GB, a sparse file of zeros: no disk): every layer's attention,
    router, norms, the output and the KV cache on a worker that can allocate 2 GiB, the 15.5 GiB of experts mapped
    from the file here. About a minute: the experts' pages are read in once."""
    from app.core.planning.fit import device_for, plan_file
    from app.core.planning.planner import buffers_by_device
    from quant.full import write_full

    path = write_full("8x7b", "Q2_K", tmp_path).path
    address = rpc_worker("--mem", "2GiB", "--threads", "2")
    plan = plan_file(path, device_for(workers=[probe_worker(address)]), PlanSettings(512, n_parallel=1, cpu_moe=32))
    on_worker = plan.placements[0].memory
    assert plan.layer_split == (33,) and plan.experts_in_ram == 32 and on_worker.total < 2 * 1024 * MIB
    with llama_log.capture() as lines:
        info = host.load(LoadSettings(str(path), n_ctx=512, n_parallel=1, rpc_workers=(address,), cpu_moe=32))
    assert info.placement == "RPC 33/33, experts of 32 in RAM"
    reported = next(sizes for name, sizes in buffers_by_device(lines).items() if name.endswith(f"[{address}]"))
    for kind, planned in (("weights", on_worker.weights), ("kv", on_worker.kv_cache), ("compute", on_worker.compute)):
        assert abs(planned - reported[kind]) <= max(0.1 * reported[kind], 32 * MIB), (kind, planned, reported)
    endless = SamplingSettings(temperature=0.0, max_new_tokens=3, ignore_eos=True)
    ticket = host.generate(GenerationRequest((Message("user", "Hi"),), endless))
    ticket.run_to_end()
    assert ticket.stats is not None and ticket.stats.generated_tokens == 3


def test_a_conversation_whose_cells_are_on_a_worker_is_kept_in_ram_and_copied_back(
    tiny_v1: dict[str, Path], rpc_worker: LocalWorkers, host: EngineHost
) -> None:
    address = rpc_worker()
    host.load(LoadSettings(str(tiny_v1["Q4_K_M"]), n_ctx=512, n_parallel=1, rpc_workers=(address,)))
    assert host.info is not None and host.info.n_gpu_layers > 0  # the KV cache lives on the worker

    def ask(text: str) -> tuple[str, int]:
        ticket = host.generate(GenerationRequest((Message("user", text),), GREEDY))
        reply = ticket.run_to_end()
        assert ticket.stats is not None
        return reply, ticket.stats.prompt_tokens_evaluated

    first, _ = ask("Tell me about the sea and the ships that sail on it at night.")
    ask("Which birds live on cliffs by the northern coast?")  # takes the only sequence
    again, evaluated = ask("Tell me about the sea and the ships that sail on it at night.")
    assert evaluated == 1  # read back from the worker, kept in RAM, written back to it
    assert again == first
