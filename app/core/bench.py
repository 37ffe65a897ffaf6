"""Benchmarks on the user's own machine: prompt processing (pp) and generation (tg) speed, time to first
token and peak memory, repeated for a median and a spread; our streaming path against bare llama-cpp-python;
a per-layer extrapolation for Mixtral-shaped test models; and tuning of threads and batch size.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.core import paths
from app.core.engine import Engine, LoadSettings, SpeedSample
from app.core.jsonfile import read_json_dict, write_json_atomic

TUNED_FILE = "tuned.json"


@dataclass(frozen=True)
class Figure:
    """Median and spread (min..max) of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        return cls(round(statistics.median(values), 4), round(min(values), 4), round(max(values), 4))


@dataclass(frozen=True)
class BenchResult:
    """One model and scenario (short prompt, or a prompt filling most of the context)."""

    model: str
    scenario: str
    prompt_tokens: int
    generated_tokens: int
    pp_tokens_per_s: Figure
    tg_tokens_per_s: Figure
    time_to_first_token_s: Figure
    repeats: int
    peak_rss_bytes: int
    vram_used_bytes: int | None  # NVML's figure right after the runs (None without an NVIDIA GPU)
    n_ctx: int
    n_threads: int | None
    n_batch: int
    gpu_layers: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def vram_used_bytes() -> int | None:
    """GPU memory in use on the first NVIDIA GPU, or None when there is none."""
    from app.core.hardware import probe_nvml

    gpus, _ = probe_nvml()
    return gpus[0].total_bytes - gpus[0].free_bytes if gpus else None


def _runs(engine: Engine, prompt: int, generate: int, repeats: int, bare: bool) -> list[SpeedSample]:
    engine.measure_speed(min(prompt, 32), 4, bare=bare)  # warm up caches and threads
    return [engine.measure_speed(prompt, generate, bare=bare) for _ in range(repeats)]


def run_bench(
    engine: Engine, *, prompt_tokens: int = 512, generate_tokens: int = 128, repeats: int = 3, long_prompt: bool = True
) -> list[BenchResult]:
    """pp/tg for a short prompt and, with ``long_prompt``, for one that fills most of the context."""
    info, settings = engine.info, engine.settings
    assert info is not None
    scenarios = [("short prompt", prompt_tokens)]
    long_tokens = info.n_ctx - generate_tokens - 16
    if long_prompt and long_tokens > prompt_tokens * 2:
        scenarios.append(("long prompt", long_tokens))
    results = []
    for name, prompt in scenarios:
        samples = _runs(engine, prompt, generate_tokens, repeats, bare=False)
        results.append(
            BenchResult(
                model=Path(info.path).name,
                scenario=name,
                prompt_tokens=prompt,
                generated_tokens=generate_tokens,
                pp_tokens_per_s=Figure.of([s.prompt_tokens_per_s for s in samples]),
                tg_tokens_per_s=Figure.of([s.generation_tokens_per_s for s in samples]),
                time_to_first_token_s=Figure.of([s.prompt_seconds for s in samples]),
                repeats=repeats,
                peak_rss_bytes=peak_rss_bytes(),
                vram_used_bytes=vram_used_bytes(),
                n_ctx=info.n_ctx,
                n_threads=settings.n_threads,
                n_batch=settings.n_batch,
                gpu_layers=info.n_gpu_layers,
            )
        )
    return results


@dataclass(frozen=True)
class Overhead:
    """Generation speed through our streaming path relative to bare llama-cpp-python, in one run."""

    ours_tokens_per_s: float
    bare_tokens_per_s: float

    @property
    def ratio(self) -> float:
        return self.ours_tokens_per_s / self.bare_tokens_per_s if self.bare_tokens_per_s else 0.0


def measure_overhead(engine: Engine, *, generate_tokens: int = 128, repeats: int = 5) -> Overhead:
    """Alternate bare and streaming runs (so drift hits both) and compare median generation speed."""
    engine.measure_speed(32, 4, bare=True)
    ours, bare = [], []
    for _ in range(repeats):
        bare.append(engine.measure_speed(16, generate_tokens, bare=True).generation_tokens_per_s)
        ours.append(engine.measure_speed(16, generate_tokens).generation_tokens_per_s)
    return Overhead(round(statistics.median(ours), 2), round(statistics.median(bare), 2))


def measure_batching(
    engine: Engine, counts: Sequence[int] = (1, 2, 4, 8), *, generate_tokens: int = 32
) -> dict[int, float]:
    """Aggregate generation tokens/s for several sequences decoded together in one llama.cpp batch."""
    return {n: round(engine.measure_parallel(n, generate_tokens=generate_tokens), 2) for n in counts}


@dataclass(frozen=True)
class Extrapolation:
    """Generation speed of a full-size model estimated from full-width test models with few layers."""

    target_layers: int
    seconds_per_layer: float
    fixed_seconds: float
    tokens_per_s: float
    note: str = "extrapolated from full-width test models with 1 and 2 layers, not measured on the real model"


def extrapolate(layer_speeds: dict[int, float], target_layers: int) -> Extrapolation:
    """Fit time per token = fixed + layers x per-layer to measured (layers -> tokens/s) and extend it."""
    (l1, s1), (l2, s2) = sorted(layer_speeds.items())[:2]
    t1, t2 = 1 / s1, 1 / s2
    per_layer = max((t2 - t1) / (l2 - l1), 0.0)
    fixed = max(t1 - l1 * per_layer, 0.0)
    total = fixed + target_layers * per_layer
    return Extrapolation(target_layers, per_layer, fixed, round(1 / total, 2) if total > 0 else 0.0)


def mixtral_shaped_models(folder: Path, layers: Sequence[int] = (1, 2)) -> dict[int, Path]:
    """Full-width 8x7B-shaped models (4096 wide, 8 experts of 14336, 32/8 heads) with few layers, Q4_K."""
    from quant.tiny import TinyMixtralSpec, write_f16

    models = {}
    for count in layers:
        path = folder / f"mixtral-8x7b-shaped-{count}layer-Q4_K.gguf"
        if not path.exists():
            spec = TinyMixtralSpec(
                n_layer=count,
                n_embd=4096,
                n_ff=14336,
                n_head=32,
                n_head_kv=8,
                zero_weights_type="Q4_K",
                name=f"Mixtral-8x7B-shaped-{count}",
            )
            write_f16(spec, path)
        models[count] = path
    return models


# -- tuning -------------------------------------------------------------------------------------------


def tuned_settings(model_path: Path) -> dict[str, int]:
    """The fastest threads / batch found by ``bench --tune`` for this file, if any."""
    key = str(model_path.resolve())
    value = read_json_dict(paths.cache_dir() / TUNED_FILE).get(key)
    return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def tune(
    settings: LoadSettings,
    *,
    generate_tokens: int = 32,
    on_trial: Callable[[dict[str, int], float, float], None] | None = None,
) -> dict[str, int]:
    """Try thread counts, batch sizes and (on GPU builds) the planner's GPU layers and a few fewer; keep the
    fastest and save it.

    The score is generation speed, with prompt speed breaking ties; the result is stored per model file and
    used by later loads that do not set threads or batch themselves.
    """
    from app.core.hardware import llama_build_info

    cores = os.cpu_count() or 2
    thread_options = sorted({max(1, cores // 2), cores, *([max(1, cores - 1)] if cores > 2 else [])})
    batch_options = (128, 512)
    layer_options: list[int | None] = [None]
    if llama_build_info()[1]:  # a GPU build: also try fewer layers than the planner's choice
        from app.core.fit import device_for, plan_file
        from app.core.planner import PlanSettings

        planned = plan_file(
            Path(settings.model_path),
            device_for(),
            PlanSettings(settings.n_ctx, settings.kv_type, settings.flash_attn, settings.n_batch),
        )
        layer_options = list[int | None](
            sorted({planned.gpu_layers, max(0, planned.gpu_layers - 2), max(0, planned.gpu_layers - 4)})
        )
    best: tuple[float, float, dict[str, int]] | None = None
    for threads in thread_options:
        for batch in batch_options:
            for layers in layer_options:
                trial = {"n_threads": threads, "n_batch": batch}
                if layers is not None:
                    trial["n_gpu_layers"] = layers
                engine = Engine()
                engine.load(
                    replace(
                        settings,
                        n_threads=threads,
                        n_batch=batch,
                        n_gpu_layers=layers if layers is not None else settings.n_gpu_layers,
                    )
                )
                engine.measure_speed(16, 4)
                sample = engine.measure_speed(min(256, engine.info.n_ctx // 2), generate_tokens)  # type: ignore[union-attr]
                engine.unload()
                if on_trial is not None:
                    on_trial(trial, sample.prompt_tokens_per_s, sample.generation_tokens_per_s)
                score = (sample.generation_tokens_per_s, sample.prompt_tokens_per_s, trial)
                if best is None or score[:2] > best[:2]:
                    best = score
    assert best is not None
    store = paths.cache_dir() / TUNED_FILE
    data = read_json_dict(store)
    data[str(Path(settings.model_path).resolve())] = best[2]
    write_json_atomic(store, data)
    return best[2]
