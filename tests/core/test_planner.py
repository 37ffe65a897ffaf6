"""The memory planner against llama.cpp's own figures, and its verdicts for real and assumed machines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.core.errors import ModelLoadError
from app.core.models.catalog import find_model
from app.core.models.gguf import read_model
from app.core.planning import fit, hardware
from app.core.planning.planner import (
    GIB,
    MIB,
    SOURCE_MEASURED,
    VERDICT_CPU,
    VERDICT_FULL,
    VERDICT_PARTIAL,
    VERDICT_TOO_BIG,
    Device,
    ModelShape,
    PlanSettings,
    plan_memory,
    recommend,
)
from app.core.runtime import llama_log
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from quant.planner_check import compare_on_cpu

CUDA_24 = Device.assumed_machine(backend="cuda", vram_bytes=24 * GIB, ram_bytes=64 * GIB, gpu_name="RTX 4090")


@pytest.mark.parametrize(
    "settings",
    [
        PlanSettings(n_ctx=512),
        PlanSettings(n_ctx=4096),
        PlanSettings(n_ctx=16384),
        PlanSettings(n_ctx=4096, flash_attn=True),
        PlanSettings(n_ctx=16384, kv_type="q8_0", flash_attn=True),
        PlanSettings(n_ctx=2048, kv_type="q4_0", flash_attn=True),
    ],
    ids=lambda s: f"{s.n_ctx}-{s.kv_type}-{'fa' if s.flash_attn else 'nofa'}",
)
def test_plan_matches_llama_cpp_for_the_tiny_mixtral(tiny_v1: dict[str, Path], settings: PlanSettings) -> None:
    rows = compare_on_cpu(tiny_v1["Q4_K_M"], settings)
    assert [r.kind for r in rows] == ["weights", "KV cache", "compute"]
    assert all(r.within_tolerance for r in rows), rows


@pytest.mark.parametrize(
    "settings",
    [PlanSettings(n_ctx=512), PlanSettings(n_ctx=16384), PlanSettings(n_ctx=8192, kv_type="q8_0", flash_attn=True)],
    ids=lambda s: f"{s.n_ctx}-{s.kv_type}-{'fa' if s.flash_attn else 'nofa'}",
)
def test_plan_matches_llama_cpp_for_a_full_width_mixtral(wide_model: Path, settings: PlanSettings) -> None:
    rows = compare_on_cpu(wide_model, settings)
    assert all(r.within_tolerance for r in rows), rows
    compute = next(r for r in rows if r.kind == "compute")
    assert compute.reported > 150 * MIB  # a real, full-width graph, not a toy figure


def shape_8x7b(file_size: int = int(24.62 * GIB)) -> ModelShape:
    return ModelShape.from_architecture(
        "8x7B",
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_ff=14336,
        n_expert=8,
        n_expert_used=2,
        n_vocab=32000,
        file_size=file_size,
    )


def test_8x7b_kv_cache_is_128_kib_per_token() -> None:
    assert shape_8x7b().kv_bytes(4096) == 512 * MIB
    assert shape_8x7b().kv_bytes(32768) == 4 * GIB


def test_verdicts_follow_the_available_memory() -> None:
    shape = shape_8x7b()
    big = Device.assumed_machine(backend="cuda", vram_bytes=80 * GIB, ram_bytes=64 * GIB, gpu_name="H100")
    full = plan_memory(shape, big)
    assert full.verdict == VERDICT_FULL and full.gpu_layers == 33 and full.ram.weights == shape.input_bytes
    partial = plan_memory(shape, CUDA_24, PlanSettings(cpu_moe=0))  # whole layers only
    assert partial.verdict == VERDICT_PARTIAL and 20 < partial.gpu_layers < 33
    assert partial.gpu.total <= 24 * GIB and partial.gpu.reserve == 512 * MIB
    cpu = plan_memory(shape, Device.assumed_machine(backend="cpu", vram_bytes=None, ram_bytes=64 * GIB))
    assert cpu.verdict == VERDICT_CPU and cpu.gpu.total == 0
    tiny = Device.assumed_machine(backend="cpu", vram_bytes=None, ram_bytes=16 * GIB)
    assert plan_memory(shape, tiny).verdict == VERDICT_TOO_BIG
    assert full.decode_tokens_per_s > partial.decode_tokens_per_s > cpu.decode_tokens_per_s > 0


def test_experts_kept_in_ram_leave_attention_and_the_kv_cache_on_the_gpu() -> None:
    shape = shape_8x7b(int(35.7 * GIB))  # Q6_K: does not fit a 24 GB card
    experts = plan_memory(shape, CUDA_24, PlanSettings(cpu_moe=12))
    in_ram = sum(shape.layer_expert_bytes[:12])
    assert experts.gpu_layers == 33 and experts.experts_in_ram == 12 and experts.strategy == "experts"
    assert experts.verdict == VERDICT_PARTIAL  # every layer offloaded, but not everything on the GPU
    assert experts.ram.weights == shape.input_bytes + in_ram
    assert experts.gpu.weights == shape.weight_bytes - shape.input_bytes - in_ram
    assert experts.gpu.kv_cache == shape.kv_bytes(4096)  # the whole KV cache on the GPU
    assert "the experts of 12 of them kept in RAM" in experts.summary()
    whole = plan_memory(shape, CUDA_24, PlanSettings(cpu_moe=0))
    assert whole.strategy == "layers" and whole.gpu_layers < 33 and whole.experts_in_ram == 0


@pytest.mark.parametrize("n_ctx", [4096, 32768])
def test_the_planner_picks_the_faster_strategy_for_the_context(n_ctx: int) -> None:
    shape = shape_8x7b(int(35.7 * GIB))
    chosen = plan_memory(shape, CUDA_24, PlanSettings(n_ctx=n_ctx))
    whole = plan_memory(shape, CUDA_24, PlanSettings(n_ctx=n_ctx, cpu_moe=0))
    fewest = next(
        plan
        for k in range(1, 33)
        if (plan := plan_memory(shape, CUDA_24, PlanSettings(n_ctx=n_ctx, cpu_moe=k))).gpu.total <= 24 * GIB
    )
    assert chosen.decode_tokens_per_s == max(whole.decode_tokens_per_s, fewest.decode_tokens_per_s)
    assert chosen.gpu.total <= 24 * GIB
    other = fewest if chosen.strategy == "layers" else whole
    assert any(f"~{other.decode_tokens_per_s:.1f} tokens/s" in note for note in chosen.notes)
    assert plan_memory(shape, CUDA_24, PlanSettings(n_ctx=n_ctx, gpu_layers=20)).strategy == "layers"  # as asked


def test_over_the_network_each_hand_over_costs_a_round_trip_so_whole_layers_win() -> None:
    from app.core.planning.planner import RPC_HANDOVER_S, OffloadTarget

    shape = shape_8x7b(int(26.5 * GIB))
    worker = OffloadTarget("RPC box:50052", "box:50052", 16 * GIB, 16 * GIB, 40.0)
    cpu = Device.assumed_machine(backend="cpu", vram_bytes=None, ram_bytes=64 * GIB)
    pooled = replace(cpu, workers=(worker,))
    chosen = plan_memory(shape, pooled)
    forced = plan_memory(shape, pooled, PlanSettings(cpu_moe=chosen.n_layer // 2))
    assert chosen.strategy == "layers" and forced.strategy == "experts"
    # every layer whose experts are in RAM goes to this machine and back: two round trips per token
    assert 1 / forced.decode_tokens_per_s > forced.experts_in_ram * 2 * RPC_HANDOVER_S
    assert chosen.decode_tokens_per_s > forced.decode_tokens_per_s


def test_a_gpu_and_a_worker_hold_layers_in_llama_cpps_order() -> None:
    from app.core.planning.planner import OffloadTarget
    from app.core.planning.text import short_verdict

    shape = shape_8x7b(int(35.7 * GIB))  # Q6_K: more than the 24 GB card alone holds
    worker = OffloadTarget("RPC box:50052", "box:50052", 16 * GIB, 16 * GIB, 40.0)
    pooled = replace(CUDA_24, workers=(worker,))
    assert [t.endpoint for t in pooled.offload_targets] == ["box:50052", ""]  # the workers first, then the GPU
    plan = plan_memory(shape, pooled)
    on_worker, on_gpu = plan.placements
    assert plan.verdict == VERDICT_FULL and on_worker.layers + on_gpu.layers == 33
    assert on_worker.memory.total <= 16 * GIB and on_gpu.memory.total - on_gpu.memory.reserve <= 23.5 * GIB
    # the GPU holds the top layers and the output (llama.cpp's last device), the worker the lowest ones
    assert on_gpu.memory.weights > sum(shape.layer_bytes[-on_gpu.layers + 1 :]) and on_worker.memory.compute < 1 * GIB
    assert short_verdict(plan) == "fits this PC + 1 worker"
    assert plan.summary().startswith(f"Offloaded 33 of 33 layers: {on_worker.layers} on RPC box:50052")


def test_more_context_means_fewer_gpu_layers_and_quantized_kv_gives_some_back() -> None:
    shape = shape_8x7b()
    layers = [plan_memory(shape, CUDA_24, PlanSettings(n_ctx=n, cpu_moe=0)).gpu_layers for n in (2048, 8192, 32768)]
    assert layers[0] >= layers[1] > layers[2]
    q8 = plan_memory(shape, CUDA_24, PlanSettings(n_ctx=32768, kv_type="q8_0", flash_attn=True, cpu_moe=0))
    assert q8.gpu_layers > layers[2]


def test_metal_counts_gpu_and_ram_against_unified_memory() -> None:
    shape = shape_8x7b()
    mac64 = Device.assumed_machine(backend="metal", vram_bytes=None, ram_bytes=64 * GIB, gpu_name="Apple M2 Max")
    assert mac64.gpu_total_bytes == 48 * GIB  # 3/4 of 64 GiB
    assert plan_memory(shape, mac64).verdict == VERDICT_FULL
    mac32 = Device.assumed_machine(backend="metal", vram_bytes=None, ram_bytes=32 * GIB, gpu_name="Apple M2 Max")
    assert mac32.gpu_total_bytes == int(32 * GIB * 2 // 3)
    assert plan_memory(shape, mac32).verdict in (VERDICT_PARTIAL, VERDICT_TOO_BIG)


def test_metal_working_set_limit_rules() -> None:
    assert hardware.metal_working_set_limit(16 * GIB) == 16 * GIB * 2 // 3
    assert hardware.metal_working_set_limit(36 * GIB) == 24 * GIB
    assert hardware.metal_working_set_limit(128 * GIB) == 96 * GIB
    assert hardware.metal_working_set_limit(128 * GIB, recommended=100 * GIB) == 100 * GIB


def test_recommendation_prefers_the_best_quality_that_runs_well() -> None:
    advice = fit.advise(find_model("mixtral-8x7b-instruct"), CUDA_24, PlanSettings(n_ctx=4096))
    assert advice.recommended is not None
    chosen = dict((item.id, plan) for item, plan in advice.plans)[advice.recommended.id]
    assert chosen.verdict == VERDICT_FULL
    bigger_full = [
        p for i, p in advice.plans if p.verdict == VERDICT_FULL and i.quant.size > advice.recommended.quant.size
    ]
    assert not bigger_full
    assert recommend([]) is None


def test_old_layout_files_are_never_recommended() -> None:
    advice = fit.advise(find_model("mixtral-8x7b-instruct-thebloke"), CUDA_24, PlanSettings())
    assert advice.recommended is None
    assert all("per-expert" in plan.notes[0] for _, plan in advice.plans)


def test_catalog_estimate_is_close_to_the_exact_header(tiny_v1: dict[str, Path]) -> None:
    exact = ModelShape.from_gguf(read_model(tiny_v1["Q8_0"]))
    estimate = ModelShape.from_architecture(
        "tiny",
        n_layer=2,
        n_embd=256,
        n_head=8,
        n_head_kv=2,
        n_ff=256,
        n_expert=8,
        n_expert_used=2,
        n_vocab=32000,
        file_size=tiny_v1["Q8_0"].stat().st_size,
    )
    assert estimate.weight_bytes == pytest.approx(exact.weight_bytes, rel=0.05)
    assert sum(estimate.layer_bytes) == pytest.approx(sum(exact.layer_bytes), rel=0.15)


def test_real_loads_correct_later_plans(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    device = Device("cpu", "CPU", 0, 0, 64 * GIB, 64 * GIB, 0.0, 40.0)
    settings = PlanSettings(n_ctx=4096)
    assert fit.plan_file(tiny_v1["Q4_0"], device, settings).source != SOURCE_MEASURED
    with llama_log.capture() as lines:
        host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=4096, n_parallel=1))
    plan = fit.plan_file(tiny_v1["Q4_0"], device, settings)
    assert plan.source == SOURCE_MEASURED
    reported = next(line for line in lines if "CPU compute buffer size" in line and not line.startswith("~"))
    assert f"{plan.ram.compute / MIB:.2f}" in reported


def test_the_plan_counts_the_kv_of_every_parallel_conversation(tiny_v1: dict[str, Path], host: EngineHost) -> None:
    device = Device("cpu", "CPU", 0, 0, 64 * GIB, 64 * GIB, 0.0, 40.0)
    one = fit.plan_file(tiny_v1["Q4_0"], device, PlanSettings(n_ctx=2048))
    two = fit.plan_file(tiny_v1["Q4_0"], device, PlanSettings(n_ctx=2048, n_parallel=2))
    assert two.ram.kv_cache == 2 * one.ram.kv_cache
    with llama_log.capture() as lines:
        host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=2048, n_parallel=2))
    reported = [line for line in lines if "KV buffer size" in line]
    assert reported and f"{two.ram.kv_cache / MIB:.2f}" in reported[0]  # what llama.cpp allocated


def test_hardware_probe_fails_soft_without_a_gpu() -> None:
    report = hardware.probe()
    assert report.ram_total_bytes > 0 and report.cpu_count >= 1
    assert report.llama_backend == "cpu" and not report.llama_supports_gpu_offload
    assert report.gpus == () and report.notes  # says why no GPU was listed
    device = Device.from_report(report)
    assert device.backend == "cpu"


def test_gpu_bandwidth_lookup_prefers_the_most_specific_name() -> None:
    assert hardware.gpu_bandwidth_gbps("NVIDIA GeForce RTX 4090") == (1008, True)
    assert hardware.gpu_bandwidth_gbps("NVIDIA H100 80GB HBM3") == (3350, True)
    assert hardware.gpu_bandwidth_gbps("Apple M2 Max") == (400, True)
    assert hardware.gpu_bandwidth_gbps("Mystery GPU")[1] is False


class _FakeGpuModel:
    """Stands in for llama.cpp on a GPU we do not have: more than ``fits`` layers run out of memory."""

    fits = 0

    def __init__(self, path: str, *, n_gpu_layers: int, **kwargs: object) -> None:
        if n_gpu_layers > self.fits:
            llama_log._on_log(
                3, b"ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory\n", None
            )
            raise RuntimeError("llama.cpp could not load the model")
        raise RuntimeError("loaded")  # enough for the test: record how far the retries went


def test_out_of_gpu_memory_retries_with_fewer_layers(
    tiny_v1: dict[str, Path], monkeypatch: pytest.MonkeyPatch, host: EngineHost
) -> None:
    from app.core.runtime import loading

    attempts: list[int] = []

    class Fake(_FakeGpuModel):
        fits = 1

        def __init__(self, path: str, *, n_gpu_layers: int, **kwargs: object) -> None:
            attempts.append(n_gpu_layers)
            super().__init__(path, n_gpu_layers=n_gpu_layers, **kwargs)

    monkeypatch.setattr(loading, "supports_gpu_offload", lambda: True)
    monkeypatch.setattr(loading, "NativeModel", Fake)
    with pytest.raises(ModelLoadError, match="loaded"):
        host.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256, n_gpu_layers=-1))
    assert attempts[0] == 3 and attempts[-1] <= 1  # all 3 (2 layers + output), then fewer until it fits
    assert attempts == sorted(attempts, reverse=True)


@pytest.mark.parametrize(("n_ctx", "kv_type", "flash"), [(4096, "f16", False), (8192, "q8_0", True)])
def test_llama_cpp_simulated_buffers_equal_a_real_load(
    tiny_v1: dict[str, Path], host: EngineHost, n_ctx: int, kv_type: str, flash: bool
) -> None:
    from app.core.planning.planner import SOURCE_LLAMA_CPP, parse_buffer_lines
    from app.core.runtime.loading import simulate_memory

    settings = PlanSettings(n_ctx=n_ctx, kv_type=kv_type, flash_attn=flash, n_parallel=2)
    simulated = simulate_memory(tiny_v1["Q4_0"], settings)
    device = Device("cpu", "CPU", 0, 0, 64 * GIB, 64 * GIB, 0.0, 40.0)
    plan = fit.plan_file(tiny_v1["Q4_0"], device, settings, from_llama_cpp=simulated)
    assert plan.source == SOURCE_LLAMA_CPP and plan.ram.kv_cache == simulated.cpu_kv
    with llama_log.capture() as lines:
        host.load(
            LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=n_ctx, kv_type=kv_type, flash_attn=flash, n_parallel=2)
        )
    real = parse_buffer_lines(lines)
    assert real is not None
    assert abs(real.cpu_kv - simulated.cpu_kv) <= 0.01 * MIB  # the logs round to 0.01 MiB
    assert abs(real.cpu_compute - simulated.cpu_compute) <= 0.01 * MIB
    assert abs(simulated.cpu_weights - plan.ram.weights) <= 0.01 * MIB  # the tensor bytes, as the planner counts
