"""Opening a model for the engine host: pre-flight checks that name what is wrong before llama.cpp is asked,
the memory planner's GPU layers (with a retry on out-of-memory), and llama.cpp's load errors turned into one
user-facing :class:`ModelLoadError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app.core.errors import DeskError, ModelLoadError
from app.core.models.gguf import GGUFError, GGUFHeader, read_model
from app.core.planning.fit import device_for, plan_file
from app.core.planning.planner import (
    MIB,
    VERDICT_TOO_BIG,
    Measurement,
    MemoryPlan,
    PlanSettings,
    check_kv_settings,
    expert_layers_in_ram,
    kv_cache_bytes,
    parse_buffer_lines,
)
from app.core.planning.rpc_workers import RpcWorker
from app.core.prompts import FORMATS, ChatFormat, detect_format, get_format
from app.core.runtime import llama_log
from app.core.runtime.devices import (
    OffloadDevice,
    connect_workers,
    expert_overrides,
    local_gpus,
    supports_gpu_offload,
)
from app.core.runtime.native import LoadAborted, NativeContext, NativeModel, NativeVocab
from app.core.runtime.tuning import tuned_settings
from app.core.runtime.types import LoadSettings, ModelInfo

GGUF_MAGIC = b"GGUF"


class LoadCancelled(DeskError):
    """The load was cancelled before it finished."""


@dataclass
class LoadedModel:
    """Everything llama.cpp holds for one loaded model; owned by the engine host's worker thread."""

    model: NativeModel
    context: NativeContext | None  # None when opened for the tokenizer only
    vocab: NativeVocab
    chat_format: ChatFormat
    settings: LoadSettings
    info: ModelInfo

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
        self.model.close()


def check_gguf_file(path: Path) -> None:
    """Fail with a clear :class:`ModelLoadError` if ``path`` is missing or not a GGUF file."""
    if not path.exists():
        raise ModelLoadError(
            f"Model file not found: {path}. Check the path, or download a model with `mixtral-desk models`.",
            path=str(path),
            reason="missing",
        )
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is a folder, not a model file; choose a .gguf file.", path=str(path), reason="missing"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path.name} is not a GGUF model file (it does not start with 'GGUF'). Mixtral Desk runs llama.cpp "
            "GGUF files such as mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf; older GGML .bin files and "
            "safetensors must be converted first.",
            path=str(path),
            reason="not_gguf",
        )


_TRUNCATED = re.compile(
    r"not within the file bounds|file is truncated|unexpectedly reached end of file|failed to read", re.I
)
_OUTDATED = re.compile(r"ffn_(gate|down|up)_exps\.weight' not found|missing tensor 'blk\.\d+\.ffn_\w+_exps", re.I)
_ARCH = re.compile(r"unknown model architecture: '([^']*)'", re.I)
_OOM = re.compile(
    r"failed to allocate|unable to allocate|out of memory|cudaMalloc failed|failed to create .*buffer", re.I
)


def classify_load_failure(path: Path, lines: Sequence[str], exc: BaseException) -> ModelLoadError:
    """Turn llama.cpp's log lines from a failed load into one user-facing error."""
    errors = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    detail = errors[-1] if errors else str(exc)
    text = "\n".join(lines)
    name = path.name
    if match := _ARCH.search(text):
        return ModelLoadError(
            f"{name} uses the model architecture '{match.group(1)}', which the installed llama.cpp does not "
            "support. Update llama-cpp-python, or choose a Mixtral GGUF.",
            path=str(path),
            reason="unsupported_arch",
            detail=detail,
        )
    if match := _DUPLICATED.search(text):
        return ModelLoadError(
            f"{name} is damaged: it holds the tensor {match.group(1)} twice. Download or convert it again.",
            path=str(path),
            reason="broken_file",
            detail=detail,
        )
    if match := _WRONG_SHAPE.search(text):
        return ModelLoadError(
            f"{name} is inconsistent: its tensor {match.group(1)} has the shape {match.group(3).strip()}, but the "
            f"file's own model settings call for {match.group(2).strip()}. It was converted wrongly or is damaged; "
            "download or convert it again.",
            path=str(path),
            reason="broken_file",
            detail=detail,
        )
    if match := _MISSING.search(text):
        return ModelLoadError(
            f"{name} is not a complete model: the tensor {match.group(1) or match.group(2)} is missing. The "
            "conversion is broken or unfinished; download or convert it again.",
            path=str(path),
            reason="broken_file",
            detail=detail,
        )
    # (files in the old layout are refused by the pre-flight before llama.cpp is asked)
    if _OUTDATED.search(text):
        return ModelLoadError(
            OUTDATED_LAYOUT_MESSAGE.format(name=name), path=str(path), reason="outdated_layout", detail=detail
        )
    if _TRUNCATED.search(text):
        return ModelLoadError(
            f"{name} is incomplete or corrupted (its data ends before the model does). Delete it and "
            "download it again; if you copied it, copy the whole file.",
            path=str(path),
            reason="truncated",
            detail=detail,
        )
    if _OOM.search(text):
        return ModelLoadError(
            f"Not enough memory to load {name} with these settings. Lower the context size, use a quantized "
            "KV cache, offload fewer layers to the GPU, or pick a smaller quantization.",
            path=str(path),
            reason="out_of_memory",
            detail=detail,
        )
    return ModelLoadError(f"llama.cpp could not load {name}: {detail}", path=str(path), reason="failed", detail=detail)


_MISSING = re.compile(r"missing tensor '([^']+)'|tensor '([^']+)' not found")
_WRONG_SHAPE = re.compile(r"tensor '([^']+)' has wrong shape; expected ([^,]+(?:, *[^,]+)*?), got (.+)$", re.M)
_DUPLICATED = re.compile(r"(?:duplicate tensor name|tensor) '([^']+)'(?: is duplicated| for tensor)")


def check_loadable(path: Path) -> None:
    """Ask llama.cpp whether it would load ``path``, without reading or allocating any weights (well under a
    second even for 8x22B): the header and tensor table against the architecture's own rules.

    Raises:
        ModelLoadError: with the defect named: unknown architecture, a tensor missing, duplicated or of the
            wrong shape, the old expert layout, a truncated file.
    """
    with llama_log.capture() as lines:
        _model_without_data(path, lines).close()


def _model_without_data(path: Path, lines: Sequence[str]) -> NativeModel:
    """The pre-flight, then a ``no_alloc`` llama.cpp model of ``path`` (its failure named from ``lines``)."""
    _read_header_for_load(path)
    try:
        return NativeModel(str(path), n_gpu_layers=0, no_alloc=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise classify_load_failure(path, lines, exc) from exc


_FILE_SIZE_LINE = re.compile(r"file size\s*=\s*([\d.]+)\s*(MiB|GiB)")
_KV_SIZE_LINE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_COMPUTE_LINE = re.compile(r"(\S+)\s+compute buffer size =\s*([\d.]+) MiB")


def simulate_memory(path: Path, settings: PlanSettings) -> Measurement:
    """What llama.cpp itself would allocate to run ``path`` on the CPU with ``settings``: a load with
    ``no_alloc`` (llama.cpp's "only load metadata and simulate memory allocations") of the model and a
    context, in well under a second at any size; nothing is read or allocated.

    Returns weights (the tensor bytes llama.cpp counts, to 0.01 MiB or GiB as it logs them), the KV cache
    for ``settings.kv_cells`` cells, and the compute buffer.

    Raises:
        ModelLoadError: what :func:`check_loadable` raises, and a context llama.cpp refuses.
    """
    with llama_log.capture() as lines:
        model = _model_without_data(path, lines)
        try:
            context = NativeContext(
                model,
                n_ctx=settings.kv_cells,
                n_batch=settings.n_batch,
                n_seq_max=max(1, settings.n_parallel),
                flash_attn=settings.flash_attn,
                kv_type=settings.kv_type,
            )
            context.close()
        except RuntimeError as exc:
            raise classify_load_failure(path, lines, exc) from exc
        finally:
            model.close()
    kv = compute = 0.0
    for line in lines:
        if match := _KV_SIZE_LINE.search(line):
            kv += float(match.group(1))
        elif (match := _COMPUTE_LINE.search(line)) and match.group(1).upper().startswith("CPU"):
            compute += float(match.group(2))
    return Measurement(cpu_weights=tensor_bytes_logged(lines), cpu_kv=round(kv * MIB), cpu_compute=round(compute * MIB))


def tensor_bytes_logged(lines: Sequence[str]) -> int:
    """The weights' size from llama.cpp's ``file size = X MiB|GiB`` load line (0.01 of the unit); 0 if absent."""
    size = 0
    for line in lines:
        if match := _FILE_SIZE_LINE.search(line):
            size = round(float(match.group(1)) * (1024 if match.group(2) == "GiB" else 1) * MIB)
    return size


OUTDATED_LAYOUT_MESSAGE = (
    "{name} stores Mixtral's experts in the old per-expert layout (converted before April 2024), which "
    "current llama.cpp no longer loads. Download a newer conversion of the same model, e.g. the "
    "mixtral-8x7b-instruct entry of `mixtral-desk models list`."
)


def _read_header_for_load(path: Path) -> GGUFHeader:
    """Pre-flight: every part present and complete, and a tensor layout llama.cpp can load."""
    try:
        model = read_model(path)
    except GGUFError as err:
        reason = "truncated" if ("truncated" in str(err) or "incomplete" in str(err)) else "failed"
        raise ModelLoadError(str(err), path=str(path), reason=reason, detail=str(err)) from err
    if model.expert_layout == "per-expert":
        raise ModelLoadError(OUTDATED_LAYOUT_MESSAGE.format(name=path.name), path=str(path), reason="outdated_layout")
    return model.header


def _check_kv_fits_in_ram(path: Path, header: GGUFHeader, settings: LoadSettings) -> None:
    """Refuse before llama.cpp allocates a KV cache larger than the free memory (it would be killed)."""
    import psutil

    needed = kv_cache_bytes(header, settings.total_kv_cells, settings.kv_type)
    available = psutil.virtual_memory().available
    if needed > available:
        gib = 1024**3
        raise ModelLoadError(
            f"Not enough memory to load {path.name} with a {settings.n_ctx}-token context: its KV cache alone "
            f"needs {needed / gib:.1f} GiB but only {available / gib:.1f} GiB are free. Lower the context size, "
            "use a quantized KV cache (with flash attention), or close other programs.",
            path=str(path),
            reason="out_of_memory",
            detail=f"kv cache {needed} bytes > available {available} bytes",
        )


def _too_big(path: Path, plan: MemoryPlan, ram_total: int) -> ModelLoadError:
    """The planner's refusal of a model that cannot fit this machine, with what would."""
    gib = 1024**3
    ram = plan.ram
    room = ram_total - ram.kv_cache - ram.compute - ram.reserve
    return ModelLoadError(
        f"{path.name} does not fit this machine: it needs {ram.total / gib:.1f} GiB of RAM (weights "
        f"{ram.weights / gib:.1f}, KV cache {ram.kv_cache / gib:.1f}, compute {ram.compute / gib:.1f}, reserve "
        f"{ram.reserve / gib:.1f}) beyond what the GPU holds, and this machine has {ram_total / gib:.1f} "
        f"GiB. Choose a quantization whose file is under {max(room, 0) / gib:.1f} GiB (`mixtral-desk models list` "
        "marks what fits), a shorter context, or a machine with more memory.",
        path=str(path),
        reason="out_of_memory",
        detail=plan.summary(),
    )


def _device_label(device: OffloadDevice) -> str:
    return f"the RPC worker at {device.endpoint}" if device.endpoint else device.name


def _device_out_of_memory(lines: Sequence[str], devices: Sequence[OffloadDevice]) -> int:
    """Which offload device llama.cpp's log says could not allocate (the first one if it does not say)."""
    for line in lines:
        if _OOM.search(line):
            for index, device in enumerate(devices):
                if re.search(rf"\b{re.escape(device.name)}\b", line):
                    return index
    return 0


def _placement_label(
    gpu_layers: int, devices: Sequence[OffloadDevice], split: Sequence[int], cpu_moe: int, n_layer: int
) -> str:
    """Where a loaded model runs, short enough for a status bar: "CPU", "CUDA 28/33", "RPC + CUDA 33/33",
    "CUDA 33/33, experts of 5 in RAM"."""
    if gpu_layers == 0:
        return "CPU"
    from app.core.planning.hardware import llama_build_info

    local = llama_build_info()[0].upper()
    if split:
        kinds = [("RPC" if device.endpoint else local) for device, count in zip(devices, split, strict=False) if count]
        where = " + ".join(dict.fromkeys(kinds))
    else:
        where = local
    label = f"{where} {min(gpu_layers, n_layer + 1)}/{n_layer + 1}"
    experts = len(expert_layers_in_ram(n_layer, gpu_layers, cpu_moe))
    return label + (f", experts of {experts} in RAM" if experts else "")


def _metadata_int(metadata: dict[str, str], key: str) -> int:
    value = metadata.get(key, "0")
    return int(value) if value.isdigit() else 0


def validate_settings(settings: LoadSettings) -> None:
    """Refuse settings that cannot work together, with the reason."""
    check_kv_settings(settings.kv_type, settings.flash_attn)
    if settings.n_ctx < 64:
        raise DeskError(f"A context of {settings.n_ctx} tokens is too small; use at least 512.")
    if settings.n_parallel < 1:
        raise DeskError("At least one sequence is needed (n_parallel >= 1).")
    if settings.chat_format is not None and settings.chat_format not in FORMATS:
        raise DeskError(f"Unknown prompt format {settings.chat_format!r}; use one of {', '.join(FORMATS)}.")


def default_thread_counts() -> tuple[int, int]:
    """Threads for generation and for prompt batches when neither the user nor a tuning run chose: one per
    physical core for generation (hyper-threads only slow it down), every usable core for prompts.

    llama.cpp's own default is a fixed 4, which on a 2-core machine runs three times slower than 2.
    """
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(physical, usable)), max(1, usable)


def open_model(settings: LoadSettings, *, should_abort: Callable[[], bool] | None = None) -> LoadedModel:
    """Load ``settings.model_path`` and create its context.

    With ``n_gpu_layers=None`` and ``cpu_moe=None`` the memory planner chooses how many whole layers go to the
    GPU and the RPC workers, or to offload every layer and keep the experts of the first ones in RAM, whichever
    it expects to be faster. If llama.cpp still runs out of memory on a device, loading is retried with fewer
    layers there (or the experts of more layers in RAM) and ``info.notes`` says so.

    Raises:
        ModelLoadError: missing, not a GGUF, truncated, unsupported architecture, out of memory.
        LoadCancelled: ``should_abort`` said so while llama.cpp was loading.
        DeskError: settings that cannot work together (e.g. a quantized V cache without flash attention).
    """
    path = Path(settings.model_path).expanduser()
    validate_settings(settings)
    check_gguf_file(path)
    header = _read_header_for_load(path)
    notes: list[str] = []
    offload = supports_gpu_offload() and not settings.vocab_only
    full_offload = max(header.arch_int("block_count"), 0) + 1
    plan_settings = PlanSettings(
        settings.n_ctx,
        settings.kv_type,
        settings.flash_attn,
        settings.n_batch,
        gpu_layers=settings.n_gpu_layers,
        n_parallel=settings.n_parallel,
        cpu_moe=settings.cpu_moe,
    )
    tuned = {} if settings.vocab_only else tuned_settings(path)  # what `bench --tune` found fastest
    plan: MemoryPlan | None = None
    devices: list[OffloadDevice] = []
    workers: list[RpcWorker] = []
    if settings.rpc_workers and not settings.vocab_only:
        devices, workers = connect_workers(settings.rpc_workers)
        if offload:
            devices += local_gpus()[:1]
    device = device_for(workers=workers)
    split: tuple[int, ...] = ()
    cpu_moe = 0
    chosen = settings.n_gpu_layers is not None or settings.cpu_moe is not None
    if not chosen and "n_gpu_layers" in tuned and (offload or devices):
        plan_settings = replace(plan_settings, gpu_layers=tuned["n_gpu_layers"], cpu_moe=tuned.get("cpu_moe", 0))
        notes.append("Using the offload that `bench --tune` found fastest for this file.")
    if not offload and not devices:
        gpu_layers = 0
    elif devices or plan_settings.gpu_layers is None or plan_settings.cpu_moe:
        plan = plan_file(path, device, plan_settings)
        gpu_layers, cpu_moe = plan.gpu_layers, plan.cpu_moe
        split = plan.layer_split if devices else ()
        notes.append(f"Memory plan: {plan.summary()}")
    else:  # a number of whole layers
        asked = plan_settings.gpu_layers
        gpu_layers = full_offload if asked < 0 else min(asked, full_offload)
    if not settings.vocab_only and gpu_layers == 0:
        _check_kv_fits_in_ram(path, header, settings)
        if plan is None:
            plan = plan_file(path, device, plan_settings)
    if plan is not None and plan.verdict == VERDICT_TOO_BIG:
        raise _too_big(path, plan, device.ram_total_bytes)
    threads = settings.n_threads or tuned.get("n_threads")
    threads_batch = threads
    if threads is None:
        threads, threads_batch = default_thread_counts()
    n_batch = settings.n_batch
    if settings.n_threads is None and settings.n_batch == LoadSettings.n_batch and "n_batch" in tuned:
        n_batch = tuned["n_batch"]
    while True:
        with llama_log.capture() as lines:
            try:
                model = NativeModel(
                    str(path),
                    n_gpu_layers=gpu_layers,
                    vocab_only=settings.vocab_only,
                    should_abort=should_abort,
                    devices=[item.handle for item in devices],
                    layer_split=split,
                    buffer_overrides=expert_overrides(cpu_moe),
                )
                context = None
                if not settings.vocab_only:
                    try:
                        context = NativeContext(
                            model,
                            n_ctx=settings.total_kv_cells,
                            n_batch=n_batch,
                            n_seq_max=settings.n_parallel,
                            flash_attn=settings.flash_attn,
                            kv_type=settings.kv_type,
                            n_threads=threads,
                            n_threads_batch=threads_batch,
                        )
                    except RuntimeError:
                        model.close()
                        raise
            except LoadAborted as exc:
                raise LoadCancelled("Loading was cancelled.") from exc
            except (ValueError, RuntimeError, OSError) as exc:
                error = classify_load_failure(path, lines, exc)
            else:
                break
        if error.reason != "out_of_memory" or gpu_layers == 0:
            raise error
        step = max(1, full_offload // 8)
        if 0 < cpu_moe < full_offload - 1:  # keep the experts of more layers in RAM
            more = min(cpu_moe + step, full_offload - 1)
            notes.append(
                f"Loading with the experts of {cpu_moe} layer{'s' if cpu_moe > 1 else ''} in RAM ran out of memory on "
                f"{_device_label(devices[_device_out_of_memory(lines, devices)]) if devices else 'the GPU'}; "
                f"retried with {more}."
            )
            cpu_moe = more
            continue
        if split:
            failed = _device_out_of_memory(lines, devices)
            fewer_split = list(split)
            fewer_split[failed] = max(0, fewer_split[failed] - step)
            notes.append(
                f"Loading ran out of memory on {_device_label(devices[failed])} with {split[failed]} layers; "
                f"retried with {fewer_split[failed]} there ({sum(fewer_split)} of {full_offload} offloaded)."
            )
            split = tuple(fewer_split)
            gpu_layers = sum(split)
            continue
        fewer = max(0, gpu_layers - step)
        notes.append(
            f"Loading with {gpu_layers} GPU layers ran out of GPU memory; retried with {fewer} (slower, but it runs)."
        )
        gpu_layers = fewer
    if not settings.vocab_only and not devices and not cpu_moe:  # kept per GPU layer count only
        measurement = parse_buffer_lines(lines)
        if measurement is not None:
            from app.core.planning.fit import measurement_store

            measurement_store().record(path, plan_settings, gpu_layers, measurement)
    metadata = model.metadata
    format_name = settings.chat_format or detect_format(metadata, model.vocab)
    arch = metadata.get("general.architecture", "")
    n_layer = _metadata_int(metadata, f"{arch}.block_count")
    info = ModelInfo(
        path=str(path),
        name=metadata.get("general.name", path.stem),
        architecture=arch,
        chat_format=format_name,
        n_ctx=settings.n_ctx,
        n_ctx_train=_metadata_int(metadata, f"{arch}.context_length"),
        n_vocab=model.vocab.size,
        expert_count=_metadata_int(metadata, f"{arch}.expert_count"),
        expert_used_count=_metadata_int(metadata, f"{arch}.expert_used_count"),
        n_gpu_layers=gpu_layers,
        file_size=path.stat().st_size,
        notes=tuple(notes),
        n_layer=n_layer,
        n_parallel=settings.n_parallel,
        kv_cells=context.n_ctx if context is not None else 0,
        experts_in_ram=len(expert_layers_in_ram(n_layer, gpu_layers, cpu_moe)),
        placement=_placement_label(gpu_layers, devices, split, cpu_moe, n_layer),
    )
    return LoadedModel(model, context, model.vocab, get_format(format_name), settings, info)
