"""Memory planning: will this model fit, how many layers go to the GPU, and how fast will it run?

Sizes follow what llama.cpp allocates: weights per tensor (the last N layers are offloaded; the output
layer only when N exceeds the layer count; token embeddings stay on the CPU), the KV cache (context padded
to 256 cells), and compute buffers from a model of llama.cpp's worst-case graph, checked against the
buffer sizes llama.cpp itself reports (see ``python -m quant planner-check``). Speed comes from a bandwidth
model: decoding one token reads every non-expert weight but only ``n_expert_used`` of ``n_expert`` experts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.core.models.gguf import GGUFHeader, GGUFModel
from app.core.storage.jsonfile import read_json_dict, write_json_atomic

MIB = 1024**2
GIB = 1024**3

KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
CONTEXT_PADDING = 256  # llama.cpp rounds the context up to a multiple of this
MAX_UBATCH = 512  # llama.cpp's default n_ubatch
GPU_RESERVE_BYTES: dict[str, int] = {"cuda": 512 * MIB, "metal": 512 * MIB}  # driver / context overhead
RAM_RESERVE_BYTES = 1 * GIB  # the OS and this app
# Share of memory bandwidth llama.cpp reaches while decoding: of the GPU's peak (typical of published
# measurements), and of this machine's measured RAM copy bandwidth (the full-size 8x7B Q2_K decoded at
# 0.84-0.92 of it here: `python -m quant realsize-bench`).
BANDWIDTH_EFFICIENCY: dict[str, float] = {"cuda": 0.6, "metal": 0.6, "cpu": 0.85}
# A fixed cost per layer run on the CPU and token (thread hand-offs, small kernels): what makes a 135M model
# decode at ~135 tokens/s here rather than the ~300 its bytes alone would allow.
CPU_LAYER_OVERHEAD_S = 150e-6
DEFAULT_RAM_BANDWIDTH_GBPS = 40.0
MIN_USABLE_TOKENS_PER_S = 5.0

VERDICT_FULL = "full_gpu"
VERDICT_PARTIAL = "partial"
VERDICT_CPU = "cpu_only"
VERDICT_TOO_BIG = "too_big"

SOURCE_HEADER = "exact from GGUF header"
SOURCE_CATALOG = "estimated from catalog"
SOURCE_MEASURED = "measured"
SOURCE_LLAMA_CPP = "from llama.cpp"


def check_kv_settings(kv_type: str, flash_attn: bool) -> None:
    """Raise a user-facing error for a KV cache setting llama.cpp cannot use."""
    from app.core.errors import DeskError

    if kv_type not in KV_BYTES_PER_ELEMENT:
        raise DeskError(f"Unknown KV cache type {kv_type!r}; use one of {', '.join(KV_BYTES_PER_ELEMENT)}.")
    if kv_type != "f16" and not flash_attn:
        raise DeskError(
            f"A {kv_type} KV cache needs flash attention in llama.cpp: turn flash attention on, or use the f16 KV cache."
        )


def padded_context(n_ctx: int) -> int:
    """The context length llama.cpp actually allocates for a requested ``n_ctx``."""
    return -(-n_ctx // CONTEXT_PADDING) * CONTEXT_PADDING


def kv_cache_bytes(header: GGUFHeader, n_ctx: int, kv_type: str = "f16") -> int:
    """Bytes of K and V cache for ``n_ctx`` tokens: layers x context x KV heads x head dim x (K + V bytes)."""
    return ModelShape.from_metadata(header).kv_bytes(n_ctx, kv_type)


@dataclass(frozen=True)
class ModelShape:
    """A model's dimensions and where its bytes are: per layer, token embeddings, output layer."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    layer_bytes: tuple[int, ...] = ()
    layer_active_bytes: tuple[int, ...] = ()
    layer_expert_bytes: tuple[int, ...] = ()  # the expert FFN matrices of each layer (all experts)
    input_bytes: int = 0
    output_bytes: int = 0
    source: str = SOURCE_HEADER

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes

    @property
    def active_bytes_per_token(self) -> int:
        return sum(self.layer_active_bytes) + self.output_bytes

    @property
    def used_expert_share(self) -> float:
        """The share of a layer's experts one token reads."""
        return self.n_expert_used / self.n_expert if self.n_expert else 1.0

    def expert_bytes(self, layer: int) -> int:
        return self.layer_expert_bytes[layer] if layer < len(self.layer_expert_bytes) else 0

    def kv_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        per_token_layer = self.n_head_kv * (self.head_dim_k + self.head_dim_v) * KV_BYTES_PER_ELEMENT[kv_type]
        return int(self.n_layer * padded_context(n_ctx) * per_token_layer)

    @classmethod
    def from_metadata(cls, header: GGUFHeader, name: str = "") -> ModelShape:
        """Dimensions only (no tensor bytes), from GGUF metadata."""
        n_embd = header.arch_int("embedding_length")
        n_head = header.arch_int("attention.head_count", 1) or 1
        n_vocab = header.arch_int("vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens", 0)
        return cls(
            name=name or str(header.metadata.get("general.name", "")),
            n_layer=header.arch_int("block_count"),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=header.arch_int("attention.head_count_kv", n_head) or n_head,
            head_dim_k=header.arch_int("attention.key_length", n_embd // n_head),
            head_dim_v=header.arch_int("attention.value_length", n_embd // n_head),
            n_vocab=n_vocab,
            n_ff=header.arch_int("expert_feed_forward_length") or header.arch_int("feed_forward_length"),
            n_expert=header.arch_int("expert_count"),
            n_expert_used=header.arch_int("expert_used_count"),
        )

    @classmethod
    def from_gguf(cls, model: GGUFModel, name: str = "") -> ModelShape:
        """Exact per-tensor placement from a model's tensor table (all parts of a split model)."""
        shape = cls.from_metadata(model.header, name)
        layers = [0] * shape.n_layer
        active = [0.0] * shape.n_layer
        experts = [0] * shape.n_layer
        used_share = shape.used_expert_share
        input_bytes = output_bytes = 0
        for tensor in model.tensors:
            layer = tensor.layer
            if layer is not None and 0 <= layer < shape.n_layer:
                layers[layer] += tensor.nbytes
                active[layer] += tensor.nbytes * (used_share if tensor.is_expert else 1.0)
                experts[layer] += tensor.nbytes if tensor.is_expert else 0
            elif tensor.name.startswith("token_embd"):
                input_bytes += tensor.nbytes
            else:
                output_bytes += tensor.nbytes  # output.weight, output_norm.weight
        return replace(
            shape,
            layer_bytes=tuple(layers),
            layer_active_bytes=tuple(int(a) for a in active),
            layer_expert_bytes=tuple(experts),
            input_bytes=input_bytes,
            output_bytes=output_bytes,
            source=SOURCE_HEADER,
        )

    @classmethod
    def from_architecture(
        cls,
        name: str,
        *,
        n_layer: int,
        n_embd: int,
        n_head: int,
        n_head_kv: int,
        n_ff: int,
        n_expert: int,
        n_expert_used: int,
        n_vocab: int,
        file_size: int,
    ) -> ModelShape:
        """An estimate from catalog fields and the file size: the bytes are shared out by parameter count."""
        head_dim = n_embd // n_head
        kv_width = n_head_kv * head_dim
        experts = max(n_expert, 1)
        attention = n_embd * (2 * n_embd + 2 * kv_width)
        expert_params = 3 * experts * n_embd * n_ff
        layer_params = attention + expert_params + experts * n_embd + 2 * n_embd
        embedding_params = n_vocab * n_embd
        total_params = n_layer * layer_params + 2 * embedding_params + n_embd
        bytes_per_param = file_size / total_params
        used_share = n_expert_used / n_expert if n_expert else 1.0
        layer = int(layer_params * bytes_per_param)
        layer_active = int((layer_params - expert_params * (1 - used_share)) * bytes_per_param)
        return cls(
            name=name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim,
            head_dim_v=head_dim,
            n_vocab=n_vocab,
            n_ff=n_ff,
            n_expert=n_expert,
            n_expert_used=n_expert_used,
            layer_bytes=(layer,) * n_layer,
            layer_active_bytes=(layer_active,) * n_layer,
            layer_expert_bytes=(int(expert_params * bytes_per_param),) * n_layer,
            input_bytes=int(embedding_params * bytes_per_param),
            output_bytes=int((embedding_params + n_embd) * bytes_per_param),
            source=SOURCE_CATALOG,
        )


@dataclass(frozen=True)
class PlanSettings:
    """The load settings that change memory use. ``gpu_layers`` None = let the planner choose."""

    n_ctx: int = 4096
    kv_type: str = "f16"
    flash_attn: bool = True
    n_batch: int = 512
    gpu_layers: int | None = None
    n_parallel: int = 1  # conversations served at once; each has its own n_ctx KV cells
    # keep the experts of the first N layers in RAM, everything else offloaded (llama.cpp's --n-cpu-moe N);
    # None = the planner compares that with offloading whole layers and picks the faster
    cpu_moe: int | None = None

    @property
    def kv_cells(self) -> int:
        return self.n_ctx * max(1, self.n_parallel)

    @property
    def n_ubatch(self) -> int:
        return min(self.n_batch, MAX_UBATCH)


def compute_buffer_bytes(
    shape: ModelShape, settings: PlanSettings, *, with_output: bool = True, with_experts: bool = True
) -> int:
    """llama.cpp's compute buffer: the peak of its worst-case graph (attention, expert FFN or output — the
    output only on the device that holds the output layer, the FFN only where some experts are)."""
    ub = settings.n_ubatch
    n_ctx = padded_context(settings.n_ctx)
    embd = shape.n_embd * ub * 4
    mask = n_ctx * ub * (2 if settings.flash_attn else 4)
    scores = 0 if settings.flash_attn else shape.n_head * n_ctx * ub * 4
    attention = scores + mask + 5.5 * embd
    feed_forward = 3 * shape.n_ff * max(shape.n_expert_used, 1) * ub * 4 + 4 * embd + mask if with_experts else 0
    output = shape.n_vocab * ub * 4 + 2 * embd if with_output else 0
    return int(max(attention, feed_forward, output))


def expert_buffer_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """The CPU's compute buffer when it runs only experts (kept in RAM) for offloaded layers."""
    ub = settings.n_ubatch
    mask = padded_context(settings.n_ctx) * ub * (2 if settings.flash_attn else 4)
    experts = 3 * shape.n_ff * max(shape.n_expert_used, 1) * ub * 4 + 2 * shape.n_embd * ub * 4 + mask
    return max(experts, host_buffer_bytes(shape, settings))


def host_buffer_bytes(shape: ModelShape, settings: PlanSettings) -> int:
    """The small host-side compute buffer left on the CPU when every layer runs on the GPU."""
    return 2 * shape.n_embd * settings.n_ubatch * 4 + shape.n_vocab * 4


@dataclass(frozen=True)
class OffloadTarget:
    """A device beyond this machine's own GPU that takes whole layers: a llama.cpp RPC worker's device."""

    name: str  # how a person knows it: "RPC 192.168.1.20:50052"
    endpoint: str
    free_bytes: int
    total_bytes: int
    bandwidth_gbps: float  # assumed: a worker's memory is not known over RPC


@dataclass(frozen=True)
class Device:
    """Where the model would run: the GPU budget (0 for CPU only), RAM and bandwidths, and any RPC workers
    (offloaded to before the local GPU, as llama.cpp orders them)."""

    backend: str  # "cuda", "metal" or "cpu"
    name: str
    gpu_total_bytes: int
    gpu_free_bytes: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpu_bandwidth_gbps: float
    ram_bandwidth_gbps: float
    assumed: bool = False
    workers: tuple[OffloadTarget, ...] = ()

    @property
    def gpu_reserve_bytes(self) -> int:
        return GPU_RESERVE_BYTES.get(self.backend, 0)

    @property
    def offload_targets(self) -> tuple[OffloadTarget, ...]:
        """Every device layers can go to, in llama.cpp's order: the workers, then this machine's GPU."""
        local: tuple[OffloadTarget, ...] = ()
        if self.backend != "cpu" and self.gpu_total_bytes > 0:
            budget = max(0, self.gpu_free_bytes - self.gpu_reserve_bytes)
            local = (OffloadTarget(self.name, "", budget, self.gpu_total_bytes, self.gpu_bandwidth_gbps),)
        return self.workers + local

    @classmethod
    def from_report(cls, report: Any, ram_bandwidth_gbps: float | None = None) -> Device:
        """The best device in a :class:`app.core.planning.hardware.HardwareReport`: the GPU with most free memory, if the
        installed llama.cpp can offload to it; else the CPU."""
        ram_bw = ram_bandwidth_gbps or DEFAULT_RAM_BANDWIDTH_GBPS
        usable = [g for g in report.gpus if report.llama_supports_gpu_offload]
        if usable:
            gpu = max(usable, key=lambda g: g.free_bytes)
            return cls(
                gpu.backend,
                gpu.name,
                gpu.total_bytes,
                gpu.free_bytes,
                report.ram_total_bytes,
                report.ram_available_bytes,
                gpu.bandwidth_gbps,
                gpu.bandwidth_gbps if gpu.backend == "metal" else ram_bw,
            )
        return cls("cpu", "CPU", 0, 0, report.ram_total_bytes, report.ram_available_bytes, 0.0, ram_bw)

    @classmethod
    def assumed_machine(
        cls,
        *,
        backend: str,
        vram_bytes: int | None,
        ram_bytes: int,
        gpu_name: str = "",
        ram_bandwidth_gbps: float | None = None,
    ) -> Device:
        """A what-if machine (``--assume-vram 24GiB --assume-ram 64GiB --assume-backend cuda``)."""
        from app.core.planning.hardware import gpu_bandwidth_gbps, metal_working_set_limit

        if backend == "cpu":
            return cls(
                "cpu",
                "CPU (assumed)",
                0,
                0,
                ram_bytes,
                ram_bytes,
                0.0,
                ram_bandwidth_gbps or DEFAULT_RAM_BANDWIDTH_GBPS,
                assumed=True,
            )
        if backend == "metal":
            limit = vram_bytes or metal_working_set_limit(ram_bytes)
            bandwidth, _ = gpu_bandwidth_gbps(gpu_name or "Apple M2 Max")
            return cls(
                "metal",
                (gpu_name or "Apple Silicon") + " (assumed)",
                limit,
                limit,
                ram_bytes,
                ram_bytes,
                bandwidth,
                bandwidth,
                assumed=True,
            )
        if vram_bytes is None:
            raise ValueError("A what-if CUDA machine needs --assume-vram.")
        bandwidth, _ = gpu_bandwidth_gbps(gpu_name or "RTX 4090")
        return cls(
            "cuda",
            (gpu_name or "CUDA GPU") + " (assumed)",
            vram_bytes,
            vram_bytes,
            ram_bytes,
            ram_bytes,
            bandwidth,
            ram_bandwidth_gbps or DEFAULT_RAM_BANDWIDTH_GBPS,
            assumed=True,
        )


@dataclass(frozen=True)
class Breakdown:
    """Bytes on one side (GPU or RAM)."""

    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    reserve: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.reserve


@dataclass(frozen=True)
class Placement:
    """What one offload device holds: consecutive layers (the output counts as the last) and their memory."""

    device: str
    endpoint: str  # "" for this machine's GPU
    layers: int
    memory: Breakdown


@dataclass(frozen=True)
class MemoryPlan:
    """Where everything goes, the verdict, and the expected decode speed. With RPC workers ``placements`` says
    what each offload device holds, and ``gpu`` is their sum."""

    model: str
    device: str
    backend: str
    settings: PlanSettings
    gpu_layers: int
    n_layer: int
    verdict: str
    gpu: Breakdown
    ram: Breakdown
    decode_tokens_per_s: float
    efficiency: float
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    placements: tuple[Placement, ...] = ()
    cpu_moe: int = 0  # the experts of layers below this stay in RAM (llama.cpp's --n-cpu-moe)

    @property
    def full_offload_layers(self) -> int:
        return self.n_layer + 1

    @property
    def experts_in_ram(self) -> int:
        """Offloaded layers whose experts are kept in RAM (0 when whole layers are offloaded)."""
        return len(expert_layers_in_ram(self.n_layer, self.gpu_layers, self.cpu_moe))

    @property
    def strategy(self) -> str:
        """How the model is split: "experts" (experts of some layers in RAM) or "layers" (whole layers)."""
        return "experts" if self.experts_in_ram else "layers"

    @property
    def layer_split(self) -> tuple[int, ...]:
        """Layers per offload device, in the devices' order (llama.cpp's ``tensor_split``)."""
        return tuple(placement.layers for placement in self.placements)

    def summary(self) -> str:
        """One line a person can act on."""
        speed = (
            f"~{self.decode_tokens_per_s:.0f} tokens/s"
            if self.decode_tokens_per_s >= 1
            else (f"~{self.decode_tokens_per_s:.1f} tokens/s")
        )
        gpu = f"{self.gpu.total / GIB:.1f} GiB on the GPU"
        ram = f"{self.ram.total / GIB:.1f} GiB in RAM"
        if self.placements and self.verdict != VERDICT_TOO_BIG:
            where = ", ".join(
                f"{p.layers} on {p.device} ({p.memory.total / GIB:.1f} GiB)" for p in self.placements if p.layers
            )
            if self.gpu_layers == 0:
                return f"Runs on the CPU only ({ram}): no offload device has room; {speed}."
            offloaded = f"Offloaded {self.gpu_layers} of {self.full_offload_layers} layers"
            if self.experts_in_ram:
                offloaded += f", the experts of {self.experts_in_ram} of them kept in RAM"
            return f"{offloaded}: {where}; {ram}; {speed}."
        if self.verdict == VERDICT_FULL:
            return f"Fits fully on the GPU ({gpu}); {speed}."
        if self.verdict == VERDICT_PARTIAL:
            return f"Partly on the GPU: {self.gpu_layers} of {self.full_offload_layers} layers ({gpu}, {ram}); {speed}."
        if self.verdict == VERDICT_CPU:
            return f"Runs on the CPU only ({ram}); {speed}."
        return f"Does not fit: needs {ram} beyond what the GPU holds, more than this machine has."

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data


def _offloaded_layers(shape: ModelShape, gpu_layers: int) -> int:
    """Repeating layers llama.cpp offloads for ``gpu_layers``: it counts the output layer first (the top of
    the model), so 1 offloads only the output and ``n_layer + 1`` everything."""
    return max(0, min(gpu_layers, shape.n_layer + 1) - 1)


def expert_layers_in_ram(n_layer: int, gpu_layers: int, cpu_moe: int) -> range:
    """The offloaded layers whose experts ``cpu_moe`` keeps in RAM: those below it (llama.cpp offloads the top
    ``gpu_layers`` slots, the output counted first)."""
    return range(n_layer - max(0, min(gpu_layers, n_layer + 1) - 1), min(cpu_moe, n_layer))


def _host_side(
    shape: ModelShape, settings: PlanSettings, gpu_layers: int, cpu_moe: int = 0
) -> tuple[Breakdown, int, int]:
    """What stays on the CPU when ``gpu_layers`` are offloaded and the experts of the first ``cpu_moe`` layers
    are kept in RAM: (RAM breakdown, bytes read per token, layers the CPU runs part or all of)."""
    n = shape.n_layer
    cpu_layers = n - _offloaded_layers(shape, gpu_layers)
    experts = expert_layers_in_ram(shape.n_layer, gpu_layers, cpu_moe)
    expert_bytes = sum(shape.expert_bytes(i) for i in experts)
    output = shape.output_bytes if gpu_layers == 0 else 0
    kv = shape.kv_bytes(settings.kv_cells, settings.kv_type) * cpu_layers // max(n, 1)
    if cpu_layers:
        compute = compute_buffer_bytes(shape, settings, with_output=gpu_layers == 0)
    elif experts:
        compute = expert_buffer_bytes(shape, settings)
    else:
        compute = host_buffer_bytes(shape, settings)
    weights = shape.input_bytes + sum(shape.layer_bytes[:cpu_layers]) + expert_bytes + output
    active = sum(shape.layer_active_bytes[:cpu_layers]) + int(expert_bytes * shape.used_expert_share) + output
    return Breakdown(weights, kv, compute, RAM_RESERVE_BYTES), active, cpu_layers + len(experts)


def _verdict(device: Device, ram_needed: int, gpu_layers: int, n_layer: int, experts_in_ram: int = 0) -> str:
    if ram_needed > device.ram_total_bytes:
        return VERDICT_TOO_BIG
    if gpu_layers > n_layer and not experts_in_ram:
        return VERDICT_FULL
    return VERDICT_PARTIAL if gpu_layers else VERDICT_CPU


def _plan_for_layers(
    shape: ModelShape,
    device: Device,
    settings: PlanSettings,
    gpu_layers: int,
    measured: Measurement | None,
    *,
    simulated: bool = False,
) -> MemoryPlan:
    n = shape.n_layer
    on_gpu = _offloaded_layers(shape, gpu_layers)
    gpu_side = _slots_memory(shape, settings, n + 1 - min(gpu_layers, n + 1), n + 1)
    ram, cpu_a, cpu_layers = _host_side(shape, settings, gpu_layers)
    gpu_a = sum(shape.layer_active_bytes[n - on_gpu :]) + (shape.output_bytes if gpu_layers > 0 else 0)
    kv_gpu = gpu_side.kv_cache
    kv_cpu = shape.kv_bytes(settings.kv_cells, settings.kv_type) - kv_gpu
    gpu_compute, cpu_compute = gpu_side.compute, ram.compute
    source = shape.source
    notes: list[str] = []
    if measured is not None:
        kv_gpu = measured.gpu_kv if gpu_layers > 0 else 0
        kv_cpu = measured.gpu_kv + measured.cpu_kv - kv_gpu
        gpu_compute, cpu_compute = measured.gpu_compute, measured.cpu_compute
        if simulated:
            source = SOURCE_LLAMA_CPP
            notes.append("KV cache and compute buffer as llama.cpp computes them for this file and settings.")
        else:
            source = SOURCE_MEASURED
            notes.append("KV cache and compute buffers as llama.cpp reported them for this file and settings.")
    gpu = Breakdown(gpu_side.weights, kv_gpu, gpu_compute, device.gpu_reserve_bytes if device.backend != "cpu" else 0)
    ram = replace(ram, kv_cache=kv_cpu, compute=cpu_compute)
    efficiency = BANDWIDTH_EFFICIENCY.get(device.backend, 0.5)
    seconds = 0.0
    if gpu_a:
        seconds += gpu_a / (device.gpu_bandwidth_gbps * 1e9 * efficiency)
    if cpu_a:
        seconds += cpu_a / (device.ram_bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY["cpu"])
        seconds += cpu_layers * CPU_LAYER_OVERHEAD_S
    ram_needed = ram.total + (gpu.total if device.backend == "metal" else 0)
    verdict = _verdict(device, ram_needed, gpu_layers, n)
    speed = 1.0 / seconds if seconds > 0 and verdict != VERDICT_TOO_BIG else 0.0
    if verdict != VERDICT_TOO_BIG and ram_needed > device.ram_available_bytes:
        notes.append(_ram_note(ram_needed, device))
    if device.backend != "cpu":
        notes.append(f"Keeps {device.gpu_reserve_bytes / MIB:.0f} MiB of GPU memory free for the driver.")
    notes.append(
        f"Speed assumes {efficiency:.0%} of peak memory bandwidth and a short conversation; long contexts are slower."
    )
    return MemoryPlan(
        model=shape.name,
        device=device.name,
        backend=device.backend,
        settings=settings,
        gpu_layers=gpu_layers,
        n_layer=n,
        verdict=verdict,
        gpu=gpu,
        ram=ram,
        decode_tokens_per_s=round(speed, 2),
        efficiency=efficiency,
        source=source,
        notes=tuple(notes),
    )


def _ram_note(ram_needed: int, device: Device) -> str:
    return (
        f"Needs {ram_needed / GIB:.1f} GiB of RAM but {device.ram_available_bytes / GIB:.1f} GiB are free now: "
        "close other programs first."
    )


RPC_TOKEN_OVERHEAD_S = 0.5e-3  # network round trips per token and worker (loopback ~0.2 ms, a LAN more)
# Handing the activations from a device to the CPU or back, per layer whose experts are kept in RAM (two per
# layer and token). On an RPC worker each is a graph sent and results fetched over the network: measured at
# ~3.5 ms on loopback here (full-size 8x7B Q2_K, experts of 20 layers in RAM: 2.46 tokens/s against 4.32 with
# whole layers; the same experts on the CPU without repacking run as fast as repacked, so the cost is the hops).
RPC_HANDOVER_S = 3.5e-3
GPU_HANDOVER_S: dict[str, float] = {"cuda": 30e-6, "metal": 10e-6}


def _slots_memory(shape: ModelShape, settings: PlanSettings, first: int, end: int, cpu_moe: int = 0) -> Breakdown:
    """Memory on a device holding layer slots [first, end) (slot ``n_layer`` is the output layer), without the
    experts of layers below ``cpu_moe`` (kept in RAM)."""
    n = shape.n_layer
    if end <= first:
        return Breakdown()
    layers = range(first, min(end, n))
    weights = sum(shape.layer_bytes[i] - (shape.expert_bytes(i) if i < cpu_moe else 0) for i in layers)
    weights += shape.output_bytes if end > n else 0
    kv = shape.kv_bytes(settings.kv_cells, settings.kv_type) * len(layers) // max(n, 1)
    with_experts = any(i >= cpu_moe for i in layers)
    return Breakdown(weights, kv, compute_buffer_bytes(shape, settings, with_output=end > n, with_experts=with_experts))


def layer_split(
    shape: ModelShape,
    targets: Sequence[OffloadTarget],
    settings: PlanSettings,
    total: int | None = None,
    cpu_moe: int = 0,
) -> tuple[int, ...]:
    """Layers per target (in the targets' order) for the most offloaded layers that fit each target's free
    memory — or exactly ``total`` layers, the overflow on the first target. llama.cpp gives the first target
    the lowest offloaded layers and the last one the highest, the output layer included. The experts of the
    layers below ``cpu_moe`` stay in RAM."""
    full = shape.n_layer + 1
    limit = full if total is None else max(0, min(total, full))
    counts = [0] * len(targets)
    top = full
    for index in reversed(range(len(targets))):
        count = 0
        while count < top - (full - limit) and (
            _slots_memory(shape, settings, top - count - 1, top, cpu_moe).total <= targets[index].free_bytes
        ):
            count += 1
        counts[index] = count
        top -= count
    if total is not None and targets:
        counts[0] += limit - sum(counts)
    return tuple(counts)


def _plan_across(
    shape: ModelShape, device: Device, settings: PlanSettings, split: Sequence[int], cpu_moe: int = 0
) -> MemoryPlan:
    """The plan with ``split[i]`` layers on ``device.offload_targets[i]``, the rest on the CPU, and the experts
    of the first ``cpu_moe`` layers in RAM."""
    n = shape.n_layer
    targets = device.offload_targets
    offloaded = sum(split)
    first = n + 1 - offloaded
    placements = []
    seconds = 0.0
    for target, count in zip(targets, split, strict=True):
        memory = _slots_memory(shape, settings, first, first + count, cpu_moe)
        if target.endpoint == "":
            memory = replace(memory, reserve=device.gpu_reserve_bytes)
        placements.append(Placement(target.name, target.endpoint, count, memory))
        if count:
            layers = range(first, min(first + count, n))
            handed_over = sum(1 for i in layers if i < cpu_moe)  # layers whose experts run on the CPU
            active = sum(shape.layer_active_bytes[i] for i in layers)
            active -= int(sum(shape.expert_bytes(i) for i in layers if i < cpu_moe) * shape.used_expert_share)
            active += shape.output_bytes if first + count > n else 0
            if target.endpoint:
                efficiency = BANDWIDTH_EFFICIENCY["cpu"]
                seconds += RPC_TOKEN_OVERHEAD_S + 2 * handed_over * RPC_HANDOVER_S + len(layers) * CPU_LAYER_OVERHEAD_S
            else:
                efficiency = BANDWIDTH_EFFICIENCY.get(device.backend, 0.5)
                seconds += 2 * handed_over * GPU_HANDOVER_S.get(device.backend, 0.0)
            seconds += active / (target.bandwidth_gbps * 1e9 * efficiency)
        first += count
    ram, cpu_active, cpu_layers = _host_side(shape, settings, offloaded, cpu_moe)
    if cpu_active:
        seconds += cpu_active / (device.ram_bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY["cpu"])
        seconds += cpu_layers * CPU_LAYER_OVERHEAD_S
    on_devices = Breakdown(
        sum(p.memory.weights for p in placements),
        sum(p.memory.kv_cache for p in placements),
        sum(p.memory.compute for p in placements),
        sum(p.memory.reserve for p in placements),
    )
    ram_needed = ram.total + (placements[-1].memory.total if device.backend == "metal" and placements else 0)
    notes = []
    experts = len(expert_layers_in_ram(n, offloaded, cpu_moe))
    verdict = _verdict(device, ram_needed, offloaded, n, experts)
    speed = 1.0 / seconds if seconds > 0 and verdict != VERDICT_TOO_BIG else 0.0
    for target, placement in zip(targets, placements, strict=True):
        if placement.memory.total - placement.memory.reserve > target.free_bytes and placement.layers:
            notes.append(
                f"{target.name} holds {placement.memory.total / GIB:.2f} GiB, more than its "
                f"{target.free_bytes / GIB:.2f} GiB free: loading will retry with fewer layers."
            )
    if verdict != VERDICT_TOO_BIG and ram_needed > device.ram_available_bytes:
        notes.append(_ram_note(ram_needed, device))
    if device.workers:
        notes.append(
            "Speed on RPC workers assumes memory as fast as this machine's and "
            f"{RPC_TOKEN_OVERHEAD_S * 1e3:.1f} ms of network per token and worker, and {RPC_HANDOVER_S * 1e3:.1f} ms "
            "for each hand-over of a layer whose experts are in RAM (two per layer and token)."
        )
    return MemoryPlan(
        model=shape.name,
        device=" + ".join(t.name for t in targets) or device.name,
        backend=device.backend,
        settings=settings,
        gpu_layers=offloaded,
        n_layer=n,
        verdict=verdict,
        gpu=on_devices,
        ram=ram,
        decode_tokens_per_s=round(speed, 2),
        efficiency=BANDWIDTH_EFFICIENCY.get(device.backend, 0.5),
        source=shape.source,
        notes=tuple(notes),
        placements=tuple(placements),
        cpu_moe=cpu_moe if experts else 0,
    )


def fewest_experts_in_ram(shape: ModelShape, device: Device, settings: PlanSettings) -> int | None:
    """The smallest ``cpu_moe`` for which every layer can be offloaded with the experts of the first ``cpu_moe``
    layers kept in RAM; None when even all experts in RAM leave too little room (or nothing can be offloaded)."""
    targets = device.offload_targets
    full = shape.n_layer + 1

    def fits(cpu_moe: int) -> bool:
        return sum(layer_split(shape, targets, settings, None, cpu_moe)) == full

    if not targets or not shape.n_expert or not fits(shape.n_layer):
        return None
    low, high = 0, shape.n_layer  # fits(high) holds; find the smallest that does
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _plan_experts(shape: ModelShape, device: Device, settings: PlanSettings) -> MemoryPlan | None:
    """Every layer offloaded with the experts of as few of the first layers as needed kept in RAM."""
    cpu_moe = fewest_experts_in_ram(shape, device, settings)
    if cpu_moe is None:
        return None
    split = layer_split(shape, device.offload_targets, settings, None, cpu_moe)
    return _plan_across(shape, device, settings, split, cpu_moe)


def _faster(by_layers: MemoryPlan, by_experts: MemoryPlan | None) -> MemoryPlan:
    """The faster of the two strategies, with a note on the other."""
    if by_experts is None or by_experts.cpu_moe == 0:
        return by_layers
    usable = [p for p in (by_layers, by_experts) if p.verdict != VERDICT_TOO_BIG] or [by_layers]
    chosen = max(usable, key=lambda p: p.decode_tokens_per_s)
    other = by_experts if chosen is by_layers else by_layers
    if other.verdict == VERDICT_TOO_BIG:
        return chosen
    how = (
        f"keeping the experts of {other.experts_in_ram} layer{'s' if other.experts_in_ram > 1 else ''} in RAM"
        if other is by_experts
        else f"offloading {other.gpu_layers} whole layers"
    )
    note = f"Chosen as the faster: {how} instead would run at ~{other.decode_tokens_per_s:.1f} tokens/s."
    return replace(chosen, notes=(note, *chosen.notes))


def plan_memory(shape: ModelShape, device: Device, settings: PlanSettings | None = None) -> MemoryPlan:
    """The plan for ``shape`` on ``device``: the most GPU layers that fit (or ``settings.gpu_layers``), or every
    layer with the experts of the first ones kept in RAM (or ``settings.cpu_moe``), whichever is faster."""
    settings = settings or PlanSettings()
    if settings.kv_type not in KV_BYTES_PER_ELEMENT:
        raise ValueError(f"unknown KV cache type {settings.kv_type!r}")
    full = shape.n_layer + 1
    targets = device.offload_targets
    if settings.cpu_moe and targets:
        wanted = full if settings.gpu_layers is None or settings.gpu_layers < 0 else settings.gpu_layers
        split = layer_split(shape, targets, settings, wanted, settings.cpu_moe)
        return _plan_across(shape, device, settings, split, settings.cpu_moe)
    by_layers = _plan_by_layers(shape, device, settings)
    if settings.cpu_moe is None and settings.gpu_layers is None and by_layers.verdict != VERDICT_FULL and targets:
        return _faster(by_layers, _plan_experts(shape, device, settings))
    return by_layers


def _plan_by_layers(shape: ModelShape, device: Device, settings: PlanSettings) -> MemoryPlan:
    """Whole layers offloaded: the most that fit, or ``settings.gpu_layers``."""
    full = shape.n_layer + 1
    if device.workers:
        total = None if settings.gpu_layers is None else full if settings.gpu_layers < 0 else settings.gpu_layers
        return _plan_across(shape, device, settings, layer_split(shape, device.offload_targets, settings, total))
    if settings.gpu_layers is not None:
        layers = full if settings.gpu_layers < 0 else min(settings.gpu_layers, full)
        if device.backend == "cpu":
            layers = 0
        return _plan_for_layers(shape, device, settings, layers, None)
    if device.backend == "cpu" or device.gpu_total_bytes <= 0:
        return _plan_for_layers(shape, device, settings, 0, None)
    chosen = _plan_for_layers(shape, device, settings, 0, None)
    for layers in range(full, 0, -1):
        candidate = _plan_for_layers(shape, device, settings, layers, None)
        if candidate.gpu.total <= device.gpu_free_bytes:
            chosen = candidate
            break
    return chosen


def with_measurement(
    plan: MemoryPlan, shape: ModelShape, device: Device, measured: Measurement, *, simulated: bool = False
) -> MemoryPlan:
    """``plan`` redone with the KV and compute sizes llama.cpp reported for the same file and settings: from a
    real load, or (``simulated``) from a load that allocated nothing."""
    return _plan_for_layers(shape, device, plan.settings, plan.gpu_layers, measured, simulated=simulated)


def recommend(plans: Sequence[tuple[str, MemoryPlan]]) -> tuple[str, MemoryPlan] | None:
    """The best quantization among ``(quant, plan)`` pairs ordered from smallest to largest file.

    The largest that fits fully on the GPU; else the largest that still decodes at a usable speed; else the
    fastest that fits at all; None when nothing fits.
    """
    fitting = [(q, p) for q, p in plans if p.verdict != VERDICT_TOO_BIG]
    if not fitting:
        return None
    full = [(q, p) for q, p in fitting if p.verdict == VERDICT_FULL]
    if full:
        return full[-1]
    usable = [(q, p) for q, p in fitting if p.decode_tokens_per_s >= MIN_USABLE_TOKENS_PER_S]
    if usable:
        return usable[-1]
    return max(fitting, key=lambda pair: pair[1].decode_tokens_per_s)


# -- learning from real loads ---------------------------------------------------------------------------

_BUFFER_KINDS = {"model": "weights", "KV": "kv", "compute": "compute"}
_BUFFER_LINE = re.compile(r"^\S+:\s+(\S+)\s+(model|KV|compute) buffer size =\s*([\d.]+) MiB")


@dataclass(frozen=True)
class Measurement:
    """Buffer sizes llama.cpp reported for one load (bytes)."""

    gpu_weights: int = 0
    cpu_weights: int = 0
    gpu_kv: int = 0
    cpu_kv: int = 0
    gpu_compute: int = 0
    cpu_compute: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def _is_gpu_buffer(device: str) -> bool:
    upper = device.upper()
    return not upper.startswith("CPU") and "HOST" not in upper


def buffers_by_device(lines: Sequence[str], *, repacked: bool = False) -> dict[str, dict[str, int]]:
    """llama.cpp's ``<device> <model|KV|compute> buffer size = X MiB`` log lines as bytes per device and kind
    ("weights", "kv", "compute"). CPU weights repacked for faster kernels (``CPU_REPACK``) are left out unless
    ``repacked``: on a CPU-only load the mapped file range already spans them."""
    found: dict[str, dict[str, float]] = {}
    for line in lines:
        match = _BUFFER_LINE.match(line.strip())
        if not match:
            continue
        device, kind, mib = match.groups()
        if kind == "model" and device.endswith("_REPACK") and not repacked:
            continue
        sizes = found.setdefault(device, {})
        sizes[_BUFFER_KINDS[kind]] = sizes.get(_BUFFER_KINDS[kind], 0.0) + float(mib)
    return {device: {kind: int(mib * MIB) for kind, mib in sizes.items()} for device, sizes in found.items()}


def parse_buffer_lines(lines: Sequence[str]) -> Measurement | None:
    """Sum llama.cpp's ``... buffer size = X MiB`` log lines into a :class:`Measurement`."""
    totals: dict[str, float] = {}
    for device, sizes in buffers_by_device(lines).items():
        side = "gpu" if _is_gpu_buffer(device) else "cpu"
        for kind, size in sizes.items():
            totals[f"{side}_{kind}"] = totals.get(f"{side}_{kind}", 0) + size
    if not totals:
        return None
    return Measurement(**{key: int(value) for key, value in totals.items()})


class MeasurementStore:
    """Measured buffer sizes per model file and settings, in a JSON file under the cache dir."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(model_path: Path, settings: PlanSettings, gpu_layers: int) -> str:
        stat = model_path.stat()
        return json.dumps(
            [
                str(model_path.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                padded_context(settings.kv_cells),
                settings.kv_type,
                settings.flash_attn,
                settings.n_ubatch,
                gpu_layers,
            ]
        )

    def record(self, model_path: Path, settings: PlanSettings, gpu_layers: int, measurement: Measurement) -> None:
        """Remember what llama.cpp reported for this file and settings (atomic write)."""
        data = read_json_dict(self.path)
        data[self.key(model_path, settings, gpu_layers)] = measurement.to_json()
        write_json_atomic(self.path, data)

    def lookup(self, model_path: Path, settings: PlanSettings, gpu_layers: int) -> Measurement | None:
        value = read_json_dict(self.path).get(self.key(model_path, settings, gpu_layers))
        if not isinstance(value, dict):
            return None
        try:
            return Measurement(**{k: int(v) for k, v in value.items()})
        except (TypeError, ValueError):
            return None
