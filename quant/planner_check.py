"""Compare the memory planner with what llama.cpp itself reports when it loads a model.

    python -m quant planner-check [--models-dir DIR] [--gpu]
    python -m quant planner-check --full [--real]

``--full`` checks the planner at Mixtral's real size: every level of the shape-true 8x7B and 8x22B Instruct
files (``quant full``; sparse, they cost no disk) at contexts 4k and 32k with KV f16 and q8_0, against what
llama.cpp computes for them with ``no_alloc`` (a load that reads and allocates nothing, so sizes far beyond
this machine are checked too). ``--real`` adds real loads of the 8x7B levels that fit in this machine's RAM,
against both the plan and the simulated figures.

On the CPU it loads the tiny Mixtral and a full-width Mixtral-shaped model (4096 wide, 8 experts of 14336,
two layers, zero weights) at several context lengths and KV cache types, reads llama.cpp's own log lines
for the model size, KV buffer and compute buffer, and prints them next to the plan. Each figure must be
within 10% or 32 MiB. With ``--gpu`` (a CUDA build of llama-cpp-python and an NVIDIA GPU) it also loads at
full and partial offload and compares the plan with the CUDA buffers and with NVML's used memory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.planning.planner import (
    MIB,
    Device,
    Measurement,
    ModelShape,
    PlanSettings,
    parse_buffer_lines,
    plan_memory,
)
from quant.tiny import TinyMixtralSpec, build_tiny, write_f16

TOLERANCE_SHARE = 0.10
TOLERANCE_BYTES = 32 * MIB
WIDE_SPEC = TinyMixtralSpec(
    n_layer=2, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, zero_weights_type="Q4_0", name="Mixtral-wide-zero"
)
CPU_GRID: tuple[PlanSettings, ...] = tuple(
    PlanSettings(n_ctx=ctx, kv_type=kv, flash_attn=fa)
    for ctx in (512, 4096, 16384)
    for kv, fa in (("f16", False), ("f16", True), ("q8_0", True), ("q4_0", True))
)


@dataclass(frozen=True)
class Comparison:
    """One planned figure next to llama.cpp's."""

    model: str
    settings: PlanSettings
    kind: str  # weights, KV cache, compute
    planned: int
    reported: int

    @property
    def within_tolerance(self) -> bool:
        return abs(self.planned - self.reported) <= max(TOLERANCE_SHARE * self.reported, TOLERANCE_BYTES)


def wide_model(folder: Path) -> Path:
    """The full-width Mixtral-shaped model (about 1.7 GB), written once into ``folder``."""
    path = folder / "mixtral-wide-zero-Q4_0.gguf"
    if not path.exists():
        write_f16(WIDE_SPEC, path)
    return path


def _load(path: Path, settings: PlanSettings, gpu_layers: int) -> tuple[Any, list[str]]:
    """A real llama.cpp load of ``path`` with ``settings``; returns the engine and llama.cpp's log of it."""
    from app.core.runtime import llama_log
    from app.core.runtime.host import EngineHost
    from app.core.runtime.types import LoadSettings

    engine = EngineHost(name="planner-check")
    with llama_log.capture() as lines:
        engine.load(
            LoadSettings(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                kv_type=settings.kv_type,
                flash_attn=settings.flash_attn,
                n_batch=settings.n_batch,
                n_gpu_layers=gpu_layers,
                n_parallel=1,
            )
        )
    return engine, list(lines)


def load_and_report(path: Path, settings: PlanSettings, gpu_layers: int = 0) -> tuple[Measurement, int, list[str]]:
    """Load ``path`` with real llama.cpp; return its buffer sizes, its model size line, and the log."""
    engine, lines = _load(path, settings, gpu_layers)
    engine.close()
    measurement = parse_buffer_lines(lines)
    if measurement is None:
        raise RuntimeError(f"llama.cpp reported no buffer sizes for {path.name}")
    from app.core.runtime.loading import tensor_bytes_logged

    return measurement, tensor_bytes_logged(lines), list(lines)


def compare_on_cpu(path: Path, settings: PlanSettings) -> list[Comparison]:
    """Plan ``path`` for this CPU and load it: weights, KV cache and compute buffer side by side."""
    from app.core.models.gguf import read_model

    shape = ModelShape.from_gguf(read_model(path), path.name)
    cpu = Device("cpu", "CPU", 0, 0, 1 << 50, 1 << 50, 0.0, 40.0)
    plan = plan_memory(
        shape, cpu, PlanSettings(settings.n_ctx, settings.kv_type, settings.flash_attn, settings.n_batch, 0)
    )
    measured, file_size, _ = load_and_report(path, settings)
    return [
        Comparison(path.name, settings, "weights", plan.ram.weights, file_size),
        Comparison(path.name, settings, "KV cache", plan.ram.kv_cache, measured.cpu_kv),
        Comparison(path.name, settings, "compute", plan.ram.compute, measured.cpu_compute),
    ]


def compare_on_workers(
    path: Path, settings: PlanSettings, addresses: Sequence[str], *, gpu_layers: int | None = None, cpu_moe: int = 0
) -> list[Comparison]:
    """Plan ``path`` across the RPC workers at ``addresses`` (whole layers, or ``gpu_layers``; the experts of the
    first ``cpu_moe`` layers in RAM) and load it there: what each worker and this machine hold, next to
    llama.cpp's buffer report."""
    from dataclasses import replace

    from app.core.models.gguf import read_model
    from app.core.planning.fit import with_workers
    from app.core.planning.planner import buffers_by_device
    from app.core.runtime import llama_log
    from app.core.runtime.devices import connect_workers, expert_overrides
    from app.core.runtime.native import NativeContext, NativeModel

    devices, workers = connect_workers(addresses)
    plan = plan_memory(
        ModelShape.from_gguf(read_model(path), path.name),
        with_workers(CPU_ONLY, workers),
        replace(settings, gpu_layers=gpu_layers, cpu_moe=cpu_moe),
    )
    with llama_log.capture() as lines:
        model = NativeModel(
            str(path),
            n_gpu_layers=plan.gpu_layers,
            devices=[device.handle for device in devices],
            layer_split=plan.layer_split,
            buffer_overrides=expert_overrides(plan.cpu_moe),
            mmap=False,  # this machine's weights in buffers of their own size, not a mapped file range
        )
        context = NativeContext(
            model,
            n_ctx=settings.kv_cells,
            n_batch=settings.n_batch,
            flash_attn=settings.flash_attn,
            kv_type=settings.kv_type,
            n_threads=1,
        )
    context.close()
    model.close()
    reported = buffers_by_device(lines, repacked=True)
    label = f"{path.name} {'/'.join(map(str, plan.layer_split))}" + (f" moe {plan.cpu_moe}" if plan.cpu_moe else "")
    rows = []
    for device, placement in zip(devices, plan.placements, strict=True):
        on_device = next((sizes for name, sizes in reported.items() if name.endswith(f"[{device.endpoint}]")), {})
        for kind, key, planned in (
            ("weights", "weights", placement.memory.weights),
            ("KV cache", "kv", placement.memory.kv_cache),
            ("compute", "compute", placement.memory.compute),
        ):
            rows.append(Comparison(label, settings, f"{device.name} {kind}", planned, on_device.get(key, 0)))
    on_host = [sizes for name, sizes in reported.items() if name.upper().startswith("CPU")]
    for kind, key, planned in (
        ("weights", "weights", plan.ram.weights),
        ("KV cache", "kv", plan.ram.kv_cache),
        ("compute", "compute", plan.ram.compute),
    ):
        rows.append(Comparison(label, settings, f"CPU {kind}", planned, sum(s.get(key, 0) for s in on_host)))
    return rows


def format_rows(rows: Sequence[Comparison]) -> str:
    width = max([9, *(len(row.kind) for row in rows)])
    lines = [
        f"{'model':32} {'ctx':>6} {'kv':5} {'fa':3} {'figure':{width}} {'planned MiB':>12} {'llama.cpp MiB':>14} "
        f"{'error':>8}  ok"
    ]
    for row in rows:
        error = (row.planned / row.reported - 1) * 100 if row.reported else float("nan")
        lines.append(
            f"{row.model[:32]:32} {row.settings.n_ctx:>6} {row.settings.kv_type:5} {'on' if row.settings.flash_attn else 'off':3} "
            f"{row.kind:{width}} {row.planned / MIB:>12.2f} {row.reported / MIB:>14.2f} {error:>+7.2f}%  "
            f"{'yes' if row.within_tolerance else 'NO'}"
        )
    return "\n".join(lines)


def gpu_check(path: Path, settings: PlanSettings) -> str:
    """CUDA only: plan vs llama.cpp's CUDA buffers vs NVML's used memory at full and half offload."""
    import pynvml

    from app.core.models.gguf import read_model
    from app.core.planning import hardware

    report = hardware.probe()
    if not report.llama_supports_gpu_offload or not report.gpus:
        raise RuntimeError("--gpu needs a CUDA build of llama-cpp-python and an NVIDIA GPU")
    shape = ModelShape.from_gguf(read_model(path), path.name)
    device = Device.from_report(report)
    lines = [
        "| GPU layers | planned GPU MiB (no reserve) | llama.cpp CUDA buffers MiB | NVML used delta MiB |",
        "|---|---|---|---|",
    ]
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    for layers in (shape.n_layer + 1, max(1, shape.n_layer // 2)):
        plan = plan_memory(
            shape, device, PlanSettings(settings.n_ctx, settings.kv_type, settings.flash_attn, settings.n_batch, layers)
        )
        before = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        engine, log = _load(path, settings, layers)
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used - before
        engine.close()
        measured = parse_buffer_lines(log) or Measurement()
        reported = measured.gpu_weights + measured.gpu_kv + measured.gpu_compute
        planned = plan.gpu.total - plan.gpu.reserve
        lines.append(f"| {layers} | {planned / MIB:.0f} | {reported / MIB:.0f} | {used / MIB:.0f} |")
    pynvml.nvmlShutdown()
    return "\n".join(lines)


FULL_GRID: tuple[PlanSettings, ...] = tuple(
    PlanSettings(n_ctx=ctx, kv_type=kv, flash_attn=fa, n_parallel=1)
    for ctx in (4096, 32768)
    for kv, fa in (("f16", False), ("q8_0", True))
)
CPU_ONLY = Device("cpu", "CPU", 0, 0, 1 << 50, 1 << 50, 0.0, 40.0)


def _cpu_plan(path: Path, settings: PlanSettings) -> Any:
    from app.core.models.gguf import read_model

    return plan_memory(ModelShape.from_gguf(read_model(path), path.name), CPU_ONLY, settings)


def compare_simulated(path: Path, settings: PlanSettings) -> list[Comparison]:
    """The plan for ``path`` next to what llama.cpp computes for it without allocating (well under a second)."""
    from app.core.runtime.loading import simulate_memory

    plan = _cpu_plan(path, settings)
    simulated = simulate_memory(path, settings)
    return [
        Comparison(path.name, settings, "weights", plan.ram.weights, simulated.cpu_weights),
        Comparison(path.name, settings, "KV cache", plan.ram.kv_cache, simulated.cpu_kv),
        Comparison(path.name, settings, "compute", plan.ram.compute, simulated.cpu_compute),
    ]


def compare_real(path: Path, settings: PlanSettings) -> list[Comparison]:
    """A real load of ``path``: the plan and the simulated figures, each against llama.cpp's real buffers."""
    from app.core.runtime.loading import simulate_memory

    plan = _cpu_plan(path, settings)
    simulated = simulate_memory(path, settings)
    measured, _size, _lines = load_and_report(path, settings)
    return [
        Comparison(path.name, settings, "weights", plan.ram.weights, measured.cpu_weights),
        Comparison(path.name, settings, "KV cache", plan.ram.kv_cache, measured.cpu_kv),
        Comparison(path.name, settings, "compute", plan.ram.compute, measured.cpu_compute),
        Comparison(path.name + " (sim)", settings, "KV cache", simulated.cpu_kv, measured.cpu_kv),
        Comparison(path.name + " (sim)", settings, "compute", simulated.cpu_compute, measured.cpu_compute),
    ]


def full_size_check(folder: Path, *, real: bool) -> list[Comparison]:
    """Write (once) every level of both shape-true models into ``folder`` and compare as the docstring says."""
    import time

    import psutil

    from quant.full import LEVELS, write_full, write_sparse

    rows: list[Comparison] = []
    fitting: list[Path] = []
    for model, instruct in (("8x7b", False), ("8x22b", True)):
        from quant.full import shape_for

        source = folder / f"{model}-f16-source.gguf"
        if not source.exists():
            write_sparse(shape_for(model, instruct=instruct), source, {}, 1)
        for level in LEVELS:
            written = write_full(model, level, folder, instruct=instruct, source=source)
            started = time.perf_counter()
            for settings in FULL_GRID:
                rows += compare_simulated(written.path, settings)
            print(
                f"{written.path.name}: {written.apparent_bytes / 2**30:.1f} GiB apparent, "
                f"{written.disk_bytes / 2**20:.1f} MiB on disk, {len(FULL_GRID)} simulated loads in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            if model == "8x7b" and written.apparent_bytes + 3 * 2**30 < psutil.virtual_memory().available:
                fitting.append(written.path)
    if real:
        for path in fitting:
            for settings in FULL_GRID:
                started = time.perf_counter()
                rows += compare_real(path, settings)
                print(
                    f"real load of {path.name} ({settings.n_ctx}, {settings.kv_type}): "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    return rows


RPC_GRID: tuple[PlanSettings, ...] = (PlanSettings(n_ctx=512, n_parallel=1), PlanSettings(n_ctx=4096, n_parallel=1))


def rpc_check(models: Sequence[Path]) -> list[Comparison]:
    """Each model on one worker (every layer, the top two slots, the output only, and the experts of one and of
    every layer in RAM), and the full-width model on two workers whose limits split it unevenly."""
    from quant.local_workers import local_workers

    rows: list[Comparison] = []
    with local_workers("") as (address,):
        for path in models:
            for settings in RPC_GRID:
                for layers, moe in ((None, 0), (2, 0), (1, 0), (None, 1), (None, 2)):
                    rows += compare_on_workers(path, settings, [address], gpu_layers=layers, cpu_moe=moe)
    # a layer of the full-width model with its KV and compute is about 1020 MiB, the output about 150 MiB
    for limits in (("1100MiB", "1200MiB"), ("1100MiB", "500MiB")):
        with local_workers(*limits) as addresses:
            rows += compare_on_workers(models[-1], RPC_GRID[0], addresses)
    return rows


def _report(rows: Sequence[Comparison]) -> int:
    print(format_rows(rows))
    bad = [r for r in rows if not r.within_tolerance]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} figures within 10% or 32 MiB of llama.cpp's own report.")
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant planner-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default="", help="where to build/keep the test models (default: a cache dir)")
    parser.add_argument("--gpu", action="store_true", help="also compare with CUDA buffers and NVML (needs a GPU)")
    parser.add_argument("--full", action="store_true", help="every level of 8x7B and 8x22B at real size")
    parser.add_argument("--real", action="store_true", help="with --full: real loads of the levels that fit RAM")
    parser.add_argument(
        "--rpc", action="store_true", help="per device, across llama.cpp RPC workers started on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    from app.core.storage import paths

    folder = Path(args.models_dir) if args.models_dir else paths.cache_dir() / "planner-check"
    folder.mkdir(parents=True, exist_ok=True)
    if args.full:
        rows = full_size_check(folder / "full", real=args.real)
        print(format_rows(rows))
        bad = [r for r in rows if not r.within_tolerance]
        worst = max(rows, key=lambda r: abs(r.planned - r.reported) / max(r.reported, 1))
        print(
            f"\n{len(rows) - len(bad)} of {len(rows)} figures within 10% or 32 MiB of llama.cpp's own; largest "
            f"relative gap {abs(worst.planned - worst.reported) / max(worst.reported, 1):.2%} "
            f"({worst.model}, {worst.kind}, ctx {worst.settings.n_ctx}, KV {worst.settings.kv_type})."
        )
        return 1 if bad else 0
    models = [build_tiny(folder, "v1", ("Q4_K_M",))["Q4_K_M"], wide_model(folder)]
    if args.rpc:
        return _report(rpc_check(models))
    rows = [row for model in models for settings in CPU_GRID for row in compare_on_cpu(model, settings)]
    print(format_rows(rows))
    bad = [r for r in rows if not r.within_tolerance]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} figures within 10% or 32 MiB of llama.cpp's own report.")
    if args.gpu:
        print("\n" + gpu_check(models[1], PlanSettings(n_ctx=4096)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
