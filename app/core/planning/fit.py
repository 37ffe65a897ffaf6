""" "Will it fit, and how fast?": the planner applied to this machine (or an assumed one), for a local file,
one catalog entry, or every quantization of a catalog model. The CLI, the GUI and the runner all ask here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app.core.errors import DeskError
from app.core.models.catalog import CatalogEntry, entry
from app.core.models.gguf import read_model
from app.core.planning import hardware
from app.core.planning.planner import (
    Device,
    Measurement,
    MeasurementStore,
    MemoryPlan,
    ModelShape,
    OffloadTarget,
    PlanSettings,
    plan_memory,
    recommend,
    with_measurement,
)
from app.core.planning.rpc_workers import RpcWorker
from app.core.planning.shapes import shape_for
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic
from models_manifest import CatalogModel

MEASUREMENTS_FILE = "measured_buffers.json"
BANDWIDTH_FILE = "ram_bandwidth.json"


@dataclass(frozen=True)
class WhatIf:
    """An assumed machine for planning before buying: any field left None comes from this machine."""

    vram_bytes: int | None = None
    ram_bytes: int | None = None
    backend: str | None = None  # "cuda", "metal" or "cpu"
    gpu_name: str = ""


def measurement_store() -> MeasurementStore:
    return MeasurementStore(paths.cache_dir() / MEASUREMENTS_FILE)


def ram_bandwidth_gbps() -> float:
    """This machine's memory copy bandwidth, measured once and cached."""
    cache_path = paths.cache_dir() / BANDWIDTH_FILE
    cached = read_json_dict(cache_path).get("gbps")
    if isinstance(cached, (int, float)) and cached > 0:
        return float(cached)
    measured = round(hardware.measure_ram_bandwidth_gbps(), 1)
    write_json_atomic(cache_path, {"gbps": measured})
    return measured


def with_workers(device: Device, workers: Sequence[RpcWorker]) -> Device:
    """``device`` with the RPC workers' devices as offload targets (their memory as they reported it; their speed
    assumed to be this machine's RAM bandwidth)."""
    targets = tuple(
        OffloadTarget(f"RPC {item.label}", item.endpoint, item.free_bytes, item.total_bytes, device.ram_bandwidth_gbps)
        for worker in workers
        for item in worker.devices
    )
    return replace(device, workers=targets)


def device_for(
    what_if: WhatIf | None = None,
    report: hardware.HardwareReport | None = None,
    workers: Sequence[RpcWorker] = (),
) -> Device:
    """The device to plan for: this machine, or the assumed one, with any RPC workers (by default those the
    report found)."""
    workers = workers or (report.rpc_workers if report is not None else ())
    if what_if is None or (what_if.backend is None and what_if.vram_bytes is None and what_if.ram_bytes is None):
        return with_workers(Device.from_report(report or hardware.probe(), ram_bandwidth_gbps()), workers)
    report = report or hardware.probe()
    backend = what_if.backend or ("cuda" if what_if.vram_bytes else "cpu")
    if backend not in ("cuda", "metal", "cpu"):
        raise DeskError(f"Unknown backend {backend!r}; assume one of cuda, metal, cpu.")
    ram = what_if.ram_bytes or report.ram_total_bytes
    try:
        assumed = Device.assumed_machine(
            backend=backend, vram_bytes=what_if.vram_bytes, ram_bytes=ram, gpu_name=what_if.gpu_name
        )
        return with_workers(assumed, workers)
    except ValueError as err:
        raise DeskError(str(err)) from err


def plan_file(
    path: Path, device: Device, settings: PlanSettings, *, from_llama_cpp: Measurement | None = None
) -> MemoryPlan:
    """Exact plan for a local GGUF (all parts of a split model), corrected by an earlier real load, or else by
    ``from_llama_cpp`` (what llama.cpp computed for this file and settings without allocating) when the plan
    keeps everything in RAM."""
    shape = ModelShape.from_gguf(read_model(path), path.name)
    plan = plan_memory(shape, device, settings)
    if device.assumed or device.workers or plan.cpu_moe:  # measurements are kept per GPU layer count only
        return plan
    measured = measurement_store().lookup(path, settings, plan.gpu_layers)
    if measured:
        return with_measurement(plan, shape, device, measured)
    if from_llama_cpp is not None and plan.gpu_layers == 0:
        return with_measurement(plan, shape, device, from_llama_cpp, simulated=True)
    return plan


def plan_entry(item: CatalogEntry, device: Device, settings: PlanSettings, *, remote: bool = False) -> MemoryPlan:
    """Plan for one catalog entry, downloaded or not."""
    if item.installed:
        plan = plan_file(item.first_path, device, settings)
    else:
        plan = plan_memory(shape_for(item, remote=remote), device, settings)
    if not item.model.loadable:
        note = "Old per-expert file layout: current llama.cpp no longer loads it (llama.cpp issue #10244)."
        plan = replace(plan, notes=(note, *plan.notes))
    return plan


@dataclass(frozen=True)
class ModelAdvice:
    """Every quantization of a model planned for one device, and the one we recommend."""

    model: CatalogModel
    plans: tuple[tuple[CatalogEntry, MemoryPlan], ...]
    recommended: CatalogEntry | None


def advise(model: CatalogModel, device: Device, settings: PlanSettings, *, remote: bool = False) -> ModelAdvice:
    """Plan every quantization of ``model`` and pick the best for this device and context."""
    planned = []
    for quant in sorted(model.quants, key=lambda q: q.size):
        item = entry(model.id, quant.quant)
        planned.append((item, plan_entry(item, device, settings, remote=remote)))
    best = recommend([(item.id, plan) for item, plan in planned if item.model.loadable])
    chosen = next((item for item, _ in planned if best and item.id == best[0]), None)
    return ModelAdvice(model, tuple(planned), chosen)
