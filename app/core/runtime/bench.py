"""Benchmarks on the user's own machine: prompt processing (pp) and generation (tg) speed, time to first
token and peak memory, repeated for a median and a spread; the host's streaming path and its continuous
batching against a bare llama.cpp C-API loop on the same context; a per-layer extrapolation for
Mixtral-shaped test models.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from app.core.errors import DeskError, NoModelError
from app.core.prompts import FORMAT_PLAIN
from app.core.runtime.host import EngineHost
from app.core.runtime.loading import LoadedModel
from app.core.runtime.native import Batch, SamplerChain
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.tuning import TUNED_FILE
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings, SpeedSample
from app.core.storage import paths
from app.core.storage.jsonfile import read_json_dict, write_json_atomic


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
    from app.core.planning.hardware import probe_nvml

    gpus, _ = probe_nvml()
    return gpus[0].total_bytes - gpus[0].free_bytes if gpus else None


def filler_prompt(host: EngineHost, prompt_tokens: int) -> tuple[int, ...]:
    """BOS and then ``prompt_tokens - 1`` tokens of ordinary English."""

    def build(loaded: LoadedModel) -> tuple[int, ...]:
        filler = loaded.vocab.encode(" the quick brown fox jumps over the lazy dog", special=False)
        body = (filler * (prompt_tokens // len(filler) + 1))[: prompt_tokens - 1]
        return (loaded.vocab.bos_id, *body)

    return host.with_model(build)


def bench_request(prompt: tuple[int, ...], generate_tokens: int) -> GenerationRequest:
    """Greedy, no penalty, no early end: what llama-bench measures."""
    sampling = SamplingSettings(temperature=0.0, repeat_penalty=1.0, max_new_tokens=generate_tokens, ignore_eos=True)
    return GenerationRequest((), sampling, chat_format=FORMAT_PLAIN, prompt_tokens=prompt)


def measure_speed(host: EngineHost, prompt_tokens: int, generate_tokens: int, *, bare: bool = False) -> SpeedSample:
    """One llama-bench style run from an empty cache: evaluate ``prompt_tokens``, then generate
    ``generate_tokens`` greedily. ``bare`` runs the reference loop on the host thread (C sampler chain, no
    per-token work beyond decode and sample); otherwise the reply streams through a ticket, exactly as the
    window, the console and the API receive it.
    """
    prompt = filler_prompt(host, prompt_tokens)
    if bare:
        timing = host.with_model(
            lambda m: bare_decode(m, prompt=prompt, generate_tokens=generate_tokens, sequences=1), exclusive=True
        )
        return SpeedSample(prompt_tokens, generate_tokens, timing.prompt_seconds, timing.decode_seconds, bare=True)
    host.clear_cache()
    ticket = host.generate(bench_request(prompt, generate_tokens))
    ticket.run_to_end()
    stats = ticket.stats
    assert stats is not None
    decode = stats.total_time_s - stats.time_to_first_token_s
    return SpeedSample(stats.prompt_tokens_evaluated, stats.generated_tokens, stats.time_to_first_token_s, decode)


@dataclass(frozen=True)
class BareTiming:
    """The reference loop's clock: prompt (until every sequence's first token) and the decode steps after."""

    sequences: int
    generated_tokens: int  # per sequence
    prompt_seconds: float
    decode_seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Aggregate generation speed after the first token."""
        steps = self.generated_tokens - 1
        return self.sequences * steps / self.decode_seconds if self.decode_seconds > 0 and steps > 0 else 0.0


def bare_decode(loaded: LoadedModel, *, prompt: tuple[int, ...], generate_tokens: int, sequences: int) -> BareTiming:
    """The reference: llama.cpp's C API in a plain loop, ``sequences`` greedy streams in one batch per step
    (each with its own C sampler chain), nothing else per token. Runs on the host thread with the context to
    itself."""
    context = loaded.context
    if context is None:
        raise NoModelError("The model was opened for its tokenizer only.")
    context.clear()
    batch = Batch(max(len(prompt), sequences), 1)
    greedy = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
    chains = [SamplerChain(greedy, loaded.vocab.size, 0) for _ in range(sequences)]
    try:
        start = time.perf_counter()
        last = []
        for seq in range(sequences):
            batch.clear()
            for position, token in enumerate(prompt):
                batch.add(token, position, seq, position == len(prompt) - 1)
            if context.decode(batch) != 0:
                raise DeskError("llama.cpp could not decode the benchmark prompt.")
            last.append(chains[seq].sample(context, batch.size - 1))
        first = time.perf_counter()
        position = len(prompt)
        for _ in range(generate_tokens - 1):
            batch.clear()
            for seq in range(sequences):
                batch.add(last[seq], position, seq, True)
            if context.decode(batch) != 0:
                raise DeskError("llama.cpp could not decode a benchmark step.")
            for seq in range(sequences):
                last[seq] = chains[seq].sample(context, seq)
            position += 1
        end = time.perf_counter()
    finally:
        for chain in chains:
            chain.close()
        batch.close()
        context.clear()
    return BareTiming(sequences, generate_tokens, first - start, end - first)


def _runs(host: EngineHost, prompt: int, generate: int, repeats: int) -> list[SpeedSample]:
    measure_speed(host, min(prompt, 32), 4)  # warm up caches and threads
    return [measure_speed(host, prompt, generate) for _ in range(repeats)]


def run_bench(
    host: EngineHost,
    *,
    prompt_tokens: int = 512,
    generate_tokens: int = 128,
    repeats: int = 3,
    long_prompt: bool = True,
) -> list[BenchResult]:
    """pp/tg for a short prompt and, with ``long_prompt``, for one that fills most of the context."""
    info = host.info
    assert info is not None
    settings = host.settings
    scenarios = [("short prompt", prompt_tokens)]
    long_tokens = info.n_ctx - generate_tokens - 16
    if long_prompt and long_tokens > prompt_tokens * 2:
        scenarios.append(("long prompt", long_tokens))
    results = []
    for name, prompt in scenarios:
        samples = _runs(host, prompt, generate_tokens, repeats)
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
class PairedRuns:
    """Generation tokens/s through the host and of the bare C-API loop, run in pairs one right after the other
    (``streams`` concurrent streams each). Each pair's ratio compares runs seconds apart, so the machine's drift
    hits both sides; the figure is the median of the pair ratios, with their range."""

    streams: int
    pairs: tuple[tuple[float, float], ...]  # (host, bare) tokens/s

    @property
    def host_tokens_per_s(self) -> float:
        return round(statistics.median(h for h, _ in self.pairs), 2)

    @property
    def bare_tokens_per_s(self) -> float:
        return round(statistics.median(b for _, b in self.pairs), 2)

    @property
    def ratios(self) -> list[float]:
        return [h / b for h, b in self.pairs if b > 0]

    @property
    def ratio(self) -> float:
        """Median of host / bare over the pairs (1.0 = as fast as bare llama.cpp)."""
        return statistics.median(self.ratios) if self.ratios else 0.0

    @property
    def per_token_overhead_us(self) -> float:
        """Median extra time per generated token on the host's path, in microseconds (negative: within noise)."""
        extra = [(1 / h - 1 / b) * 1e6 for h, b in self.pairs if h > 0 and b > 0]
        return statistics.median(extra) if extra else 0.0

    def to_json(self) -> dict[str, Any]:
        ratios = self.ratios
        return {
            "streams": self.streams,
            "host_tokens_per_s": self.host_tokens_per_s,
            "bare_tokens_per_s": self.bare_tokens_per_s,
            "ratio": round(self.ratio, 3),
            "ratio_low": round(min(ratios), 3) if ratios else 0.0,
            "ratio_high": round(max(ratios), 3) if ratios else 0.0,
            "per_token_overhead_us": round(self.per_token_overhead_us, 1),
            "pairs": len(self.pairs),
        }


def measure_overhead(host: EngineHost, *, generate_tokens: int = 128, repeats: int = 5) -> PairedRuns:
    """One stream: a bare run then a streaming run (a client thread reading the ticket), ``repeats`` pairs."""
    measure_speed(host, 32, 4, bare=True)
    measure_speed(host, 32, 4)
    pairs = []
    for _ in range(repeats):
        bare = measure_speed(host, 16, generate_tokens, bare=True).generation_tokens_per_s
        ours = measure_speed(host, 16, generate_tokens).generation_tokens_per_s
        pairs.append((ours, bare))
    return PairedRuns(1, tuple(pairs))


def read_together(tickets: Sequence[ReplyTicket]) -> None:
    """Read every ticket's stream to its end on this one thread, woken by their listeners: how the API
    server's event loop reads its concurrent streams."""
    ready = threading.Event()
    reading = list(tickets)
    for ticket in reading:
        ticket.set_listener(ready.set)
    while reading:
        ready.wait()
        ready.clear()
        for ticket in list(reading):
            with contextlib.suppress(queue.Empty):
                while ticket.next_delta(0) is not None:
                    pass
                reading.remove(ticket)


def host_parallel_rate(host: EngineHost, streams: int, prompt: tuple[int, ...], generate_tokens: int) -> float:
    """N tickets submitted at once and read by one client thread: aggregate tokens/s after the first tokens."""
    host.clear_cache()
    request = bench_request(prompt, generate_tokens)
    tickets = [host.generate(request) for _ in range(streams)]
    read_together(tickets)
    firsts, ends = [], []
    for ticket in tickets:
        stats = ticket.stats
        assert stats is not None
        firsts.append(stats.time_to_first_token_s)
        ends.append(stats.total_time_s)
    decode = max(ends) - max(firsts)
    return streams * (generate_tokens - 1) / decode if decode > 0 else 0.0


def measure_batching(
    host: EngineHost,
    counts: Sequence[int] = (1, 2, 4, 8),
    *,
    prompt_tokens: int = 32,
    generate_tokens: int = 64,
    repeats: int = 3,
) -> list[PairedRuns]:
    """For each N: the bare N-sequence loop, then N concurrent streams through the host, ``repeats`` pairs."""
    prompt = filler_prompt(host, prompt_tokens)
    figures = []
    for n in counts:
        pairs = []
        for _ in range(repeats):
            timing = host.with_model(
                partial(bare_decode, prompt=prompt, generate_tokens=generate_tokens, sequences=n), exclusive=True
            )
            pairs.append((host_parallel_rate(host, n, prompt, generate_tokens), timing.tokens_per_s))
        figures.append(PairedRuns(n, tuple(pairs)))
    return figures


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


# -- tuning -------------------------------------------------------------------------------------------


def _offload_options(settings: LoadSettings) -> list[dict[str, int]]:
    """The offloads :func:`tune` tries: ``{}`` (no choice to make) on a CPU without workers, else whole layers
    and experts in RAM around what the planner chose."""
    from app.core.models.gguf import read_model
    from app.core.planning.fit import device_for, plan_file
    from app.core.planning.planner import ModelShape, PlanSettings, fewest_experts_in_ram
    from app.core.planning.rpc_workers import probe_worker
    from app.core.runtime.devices import supports_gpu_offload

    if settings.n_gpu_layers is not None or settings.cpu_moe is not None:
        return [{}]  # the user chose the offload
    if not supports_gpu_offload() and not settings.rpc_workers:
        return [{}]
    path = Path(settings.model_path)
    device = device_for(workers=[probe_worker(endpoint) for endpoint in settings.rpc_workers])
    plan_settings = PlanSettings(settings.n_ctx, settings.kv_type, settings.flash_attn, settings.n_batch)
    layers = plan_file(path, device, replace(plan_settings, cpu_moe=0)).gpu_layers
    options = [
        {"n_gpu_layers": count, "cpu_moe": 0} for count in sorted({layers, max(0, layers - 2), max(0, layers - 4)})
    ]
    shape = ModelShape.from_gguf(read_model(path))
    fewest = fewest_experts_in_ram(shape, device, plan_settings)
    if fewest is not None:
        full = shape.n_layer + 1
        for count in sorted({max(fewest, 1), min(fewest + 2, shape.n_layer), min(fewest + 4, shape.n_layer)}):
            options.append({"n_gpu_layers": full, "cpu_moe": count})
    return options


def tune(
    settings: LoadSettings,
    *,
    generate_tokens: int = 32,
    on_trial: Callable[[dict[str, int], float, float], None] | None = None,
) -> dict[str, int]:
    """Try thread counts, batch sizes and, where something can be offloaded (a GPU build, RPC workers), both ways
    of offloading: the planner's whole layers and two fewer and four fewer, and every layer with the experts of
    the planner's fewest layers in RAM and of two and four more. Keep the fastest and save it.

    The score is generation speed, with prompt speed breaking ties; the result is stored per model file and
    used by later loads that do not set threads, batch or offload themselves.
    """
    cores = os.cpu_count() or 2
    thread_options = sorted({max(1, cores // 2), cores, *([max(1, cores - 1)] if cores > 2 else [])})
    batch_options = (128, 512)
    offload_options = _offload_options(settings)
    best: tuple[float, float, dict[str, int]] | None = None
    host = EngineHost(name="tuning-host")
    try:
        for threads in thread_options:
            for batch in batch_options:
                for offload in offload_options:
                    trial = {"n_threads": threads, "n_batch": batch, **offload}
                    info = host.load(
                        replace(
                            settings,
                            n_threads=threads,
                            n_batch=batch,
                            n_gpu_layers=offload.get("n_gpu_layers", settings.n_gpu_layers),
                            cpu_moe=offload.get("cpu_moe", settings.cpu_moe),
                            n_parallel=1,
                        )
                    )
                    measure_speed(host, 16, 4)
                    sample = measure_speed(host, min(256, info.n_ctx // 2), generate_tokens)
                    if on_trial is not None:
                        on_trial(trial, sample.prompt_tokens_per_s, sample.generation_tokens_per_s)
                    score = (sample.generation_tokens_per_s, sample.prompt_tokens_per_s, trial)
                    if best is None or score[:2] > best[:2]:
                        best = score
    finally:
        host.close()
    assert best is not None
    store = paths.cache_dir() / TUNED_FILE
    data = read_json_dict(store)
    data[str(Path(settings.model_path).resolve())] = best[2]
    write_json_atomic(store, data)
    return best[2]
