"""The runner: load a GGUF with llama.cpp, stream replies, cancel, report stats, reuse the prompt prefix.

This module is the only owner of ``llama_cpp.Llama`` objects. One :class:`Engine` holds one model and runs
one generation at a time; callers on other threads may only call :meth:`Engine.cancel`.

    engine = Engine()
    engine.load(LoadSettings(model_path="model.gguf"))
    generation = engine.generate(GenerationRequest(messages=(Message("user", "Hi"),)))
    for delta in generation:
        print(delta, end="")
    print(generation.stats)
"""

from __future__ import annotations

import codecs
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.core import llama_log
from app.core.context import POLICIES, POLICY_ROLLING, FittedPrompt, fit_prompt, reply_reserve
from app.core.errors import DeskError, EngineBusyError, ModelLoadError, NoModelError
from app.core.gguf import GGUFError, GGUFHeader, read_model
from app.core.planner import PlanSettings, check_kv_settings, kv_cache_bytes, parse_buffer_lines
from app.core.prompts import FORMATS, ChatFormat, Message, detect_format, get_format

KV_CACHE_TYPES: dict[str, int] = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
GGUF_MAGIC = b"GGUF"

STOP_EOS = "eos"
STOP_STRING = "stop_string"
STOP_MAX_TOKENS = "max_tokens"
STOP_CONTEXT_FULL = "context_full"
STOP_CANCELLED = "cancelled"


@dataclass(frozen=True)
class LoadSettings:
    """How to load a model.

    ``n_gpu_layers``: layers to offload, ``-1`` = all, ``None`` = all when the installed llama.cpp can
    offload, else none. ``kv_type`` applies to both K and V; a quantized V cache needs flash attention.
    """

    model_path: str
    n_ctx: int = 4096
    n_gpu_layers: int | None = None
    flash_attn: bool = False
    kv_type: str = "f16"
    n_threads: int | None = None
    n_batch: int = 512
    seed: int | None = None
    chat_format: str | None = None  # None = detect from the GGUF
    vocab_only: bool = False  # tokenizer and metadata only: enough to build prompts, not to generate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for one reply. ``temperature`` 0 is greedy; ``max_new_tokens`` 0 = until the context is full."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_new_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    """A conversation to answer (or, in plain format, text to continue)."""

    messages: tuple[Message, ...]
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    context_policy: str = POLICY_ROLLING
    chat_format: str | None = None  # None: the model's format; "plain" continues text with a chat model too


@dataclass(frozen=True)
class GenerationStats:
    """What one reply cost. Token rates are 0.0 when there was nothing to time."""

    prompt_tokens: int
    prompt_tokens_cached: int
    prompt_tokens_evaluated: int
    generated_tokens: int
    time_to_first_token_s: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    total_time_s: float
    stop_reason: str
    context_used: int
    context_size: int
    dropped_messages: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpeedSample:
    """One timed run: prompt evaluation (until the first token) and generation after it."""

    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float
    decode_seconds: float
    bare: bool = False

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1  # the first token belongs to the prompt phase
        return steps / self.decode_seconds if self.decode_seconds > 0 and steps > 0 else 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, as llama.cpp sees it."""

    path: str
    name: str
    architecture: str
    chat_format: str
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    expert_count: int
    expert_used_count: int
    n_gpu_layers: int
    file_size: int
    notes: tuple[str, ...] = ()
    n_layer: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Cancelled(Exception):
    pass


def _make_llama_class() -> type:
    """A ``Llama`` that evaluates prompts batch by batch, counting tokens and honouring cancel."""
    from llama_cpp import Llama

    class InstrumentedLlama(Llama):
        evaluated = 0
        cancel_event: threading.Event | None = None

        def eval(self, tokens: Sequence[int]) -> None:
            tokens = list(tokens)
            for start in range(0, len(tokens), self.n_batch):
                if self.cancel_event is not None and self.cancel_event.is_set():
                    raise _Cancelled
                chunk = tokens[start : start + self.n_batch]
                super().eval(chunk)
                self.evaluated += len(chunk)

    return InstrumentedLlama


class LlamaVocabulary:
    """The :class:`app.core.prompts.Vocabulary` of a loaded llama.cpp model."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp

        self._llama = llama
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._vocab = vocab
        self.size: int = llama.n_vocab()
        self.bos_id: int = llama.token_bos()
        self.eos_id: int = llama.token_eos()
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self._pieces: dict[str, int] | None = None
        self._template: str | None = llama.metadata.get("tokenizer.chat_template")

    def encode(self, text: str, *, special: bool) -> list[int]:
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def decode(self, tokens: Sequence[int], *, special: bool = True) -> str:
        """Text of ``tokens``; with ``special`` control tokens such as ``<s>`` are shown too."""
        return bytes(self._llama.detokenize(list(tokens), special=special)).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token's text (may be part of a UTF-8 character)."""
        return bytes(self._llama.detokenize([token]))

    def piece_id(self, piece: str) -> int | None:
        if self._pieces is None:
            import llama_cpp

            pieces: dict[str, int] = {}
            for token_id in range(self.size):
                text = llama_cpp.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", errors="replace")
                pieces.setdefault(text, token_id)
            self._pieces = pieces
        return self._pieces.get(piece)

    def is_end_of_generation(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def render_template(self, messages: Sequence[Message]) -> str | None:
        if not self._template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = self.decode([self.bos_id]) if self.bos_id >= 0 else ""
        eos = self.decode([self.eos_id]) if self.eos_id >= 0 else ""
        formatter = Jinja2ChatFormatter(self._template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        result = formatter(messages=[m.to_json() for m in messages])  # type: ignore[misc]
        return str(result.prompt)


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

    needed = kv_cache_bytes(header, settings.n_ctx, settings.kv_type)
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


def _metadata_int(metadata: dict[str, str], key: str) -> int:
    value = metadata.get(key, "0")
    return int(value) if value.isdigit() else 0


class TokenTextDecoder:
    """Turns token bytes into text deltas that never split a UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, piece: bytes) -> str:
        return str(self._decoder.decode(piece))

    def flush(self) -> str:
        """Whatever is left; an incomplete character at the very end becomes U+FFFD."""
        return str(self._decoder.decode(b"", final=True))


class StopStringFilter:
    """Holds back streamed text that might be the start of a stop string; cuts the text at a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what may be shown now and whether a stop string was reached."""
        if not self._stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class Generation:
    """One streamed reply: iterate for text deltas; ``stats``, ``prompt`` and ``text`` fill in as it runs."""

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
        self.cancel_event = threading.Event()
        self.stats: GenerationStats | None = None
        self.prompt: FittedPrompt | None = None
        self.text = ""
        self.tokens_generated = 0
        self.token_ids: list[int] = []  # the reply's tokens, as sampled
        self._iterator: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._engine._run(self)
        return self._iterator

    def cancel(self) -> None:
        """Stop after the token being computed now; safe from any thread."""
        self.cancel_event.set()

    def run_to_end(self) -> str:
        """Consume the whole stream and return the reply text."""
        for _ in self:
            pass
        return self.text


class Engine:
    """One loaded model and the one generation it may run at a time."""

    def __init__(self) -> None:
        self._llama: Any = None
        self._vocab: LlamaVocabulary | None = None
        self._format: ChatFormat | None = None
        self._settings: LoadSettings | None = None
        self.info: ModelInfo | None = None
        self._busy = threading.Lock()
        self._current: Generation | None = None

    # -- loading ---------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def vocab(self) -> LlamaVocabulary:
        if self._vocab is None:
            raise NoModelError("No model is loaded.")
        return self._vocab

    @property
    def chat_format(self) -> ChatFormat:
        if self._format is None:
            raise NoModelError("No model is loaded.")
        return self._format

    @property
    def settings(self) -> LoadSettings:
        if self._settings is None:
            raise NoModelError("No model is loaded.")
        return self._settings

    def load(self, settings: LoadSettings) -> ModelInfo:
        """Load the model in ``settings`` (replacing any loaded one).

        With ``n_gpu_layers=None`` the memory planner chooses how many layers go to the GPU; if llama.cpp
        still runs out of GPU memory, loading is retried with fewer layers and ``info.notes`` says so.

        Raises:
            ModelLoadError: missing, not a GGUF, truncated, unsupported architecture, out of memory.
            DeskError: settings that cannot work together (e.g. a quantized V cache without flash attention).
        """
        import llama_cpp

        path = Path(settings.model_path).expanduser()
        _validate_settings(settings)
        check_gguf_file(path)
        header = _read_header_for_load(path)
        self.unload()
        notes: list[str] = []
        offload = bool(llama_cpp.llama_supports_gpu_offload()) and not settings.vocab_only
        full_offload = max(header.arch_int("block_count"), 0) + 1
        plan_settings = PlanSettings(settings.n_ctx, settings.kv_type, settings.flash_attn, settings.n_batch)
        tuned = {} if settings.vocab_only else _tuned(path)  # what `bench --tune` found fastest for this file
        if not offload:
            gpu_layers = 0
        elif settings.n_gpu_layers is None and "n_gpu_layers" in tuned:
            gpu_layers = min(tuned["n_gpu_layers"], full_offload)
            notes.append(f"Using the {gpu_layers} GPU layers that `bench --tune` found fastest.")
        elif settings.n_gpu_layers is None:
            from app.core.fit import device_for, plan_file

            plan = plan_file(path, device_for(), plan_settings)
            gpu_layers = plan.gpu_layers
            notes.append(f"Memory plan: {plan.summary()}")
        else:
            gpu_layers = full_offload if settings.n_gpu_layers < 0 else min(settings.n_gpu_layers, full_offload)
        if not settings.vocab_only and gpu_layers == 0:
            _check_kv_fits_in_ram(path, header, settings)
        while True:
            try:
                llama, lines = self._construct(path, settings, gpu_layers, tuned)
                break
            except ModelLoadError as err:
                if err.reason != "out_of_memory" or gpu_layers == 0:
                    raise
                fewer = max(0, gpu_layers - max(1, full_offload // 8))
                notes.append(
                    f"Loading with {gpu_layers} GPU layers ran out of GPU memory; retried with {fewer} "
                    "(slower, but it runs)."
                )
                gpu_layers = fewer
        if not settings.vocab_only:
            measurement = parse_buffer_lines(lines)
            if measurement is not None:
                from app.core.fit import measurement_store

                measurement_store().record(path, plan_settings, gpu_layers, measurement)
        vocab = LlamaVocabulary(llama)
        metadata: dict[str, str] = dict(llama.metadata)
        format_name = settings.chat_format or detect_format(metadata, vocab)
        arch = metadata.get("general.architecture", "")
        self._llama, self._vocab, self._settings = llama, vocab, settings
        self._format = get_format(format_name)
        self.info = ModelInfo(
            path=str(path),
            name=metadata.get("general.name", path.stem),
            architecture=arch,
            chat_format=format_name,
            n_ctx=llama.n_ctx(),
            n_ctx_train=_metadata_int(metadata, f"{arch}.context_length"),
            n_vocab=vocab.size,
            expert_count=_metadata_int(metadata, f"{arch}.expert_count"),
            expert_used_count=_metadata_int(metadata, f"{arch}.expert_used_count"),
            n_gpu_layers=gpu_layers,
            file_size=path.stat().st_size,
            notes=tuple(notes),
            n_layer=_metadata_int(metadata, f"{arch}.block_count"),
        )
        return self.info

    def _construct(
        self, path: Path, settings: LoadSettings, gpu_layers: int, tuned: dict[str, int]
    ) -> tuple[Any, list[str]]:
        """Create the llama.cpp model and context; returns it with llama.cpp's log lines of the load."""
        kv = KV_CACHE_TYPES[settings.kv_type]
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": settings.n_ctx,
            "n_gpu_layers": gpu_layers,
            "flash_attn": settings.flash_attn,
            "type_k": kv,
            "type_v": kv,
            "n_batch": settings.n_batch,
            "verbose": False,
        }
        if settings.vocab_only:
            kwargs.update(vocab_only=True, n_gpu_layers=0)
        threads = settings.n_threads
        if threads is None:
            threads = tuned.get("n_threads")
            if settings.n_batch == LoadSettings.n_batch and "n_batch" in tuned:
                kwargs["n_batch"] = tuned["n_batch"]
        if threads:
            kwargs["n_threads"] = threads
            kwargs["n_threads_batch"] = threads
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        with llama_log.capture() as lines:
            try:
                llama = _make_llama_class()(**kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                raise classify_load_failure(path, lines, exc) from exc
        return llama, lines

    def unload(self) -> None:
        """Free the loaded model, if any."""
        with self._busy_or_raise():
            llama, self._llama = self._llama, None
            self._vocab = self._format = self._settings = None
            self.info = None
            if llama is not None:
                llama.close()

    def _busy_or_raise(self) -> threading.Lock:
        if self._busy.locked() and self._current is not None:
            raise EngineBusyError("The model is still answering; stop the reply first.")
        return self._busy

    # -- measuring -------------------------------------------------------------------------------

    def measure_speed(self, prompt_tokens: int, generate_tokens: int, *, bare: bool = False) -> SpeedSample:
        """One llama-bench style run: evaluate ``prompt_tokens`` from an empty cache, then greedily generate
        ``generate_tokens``. ``bare`` drives llama-cpp-python's own ``generate`` loop (the baseline); otherwise
        the reply streams through :meth:`generate`, exactly as the CLI and GUI receive it.
        """
        llama, vocab = self._llama, self._vocab
        if llama is None or vocab is None or self.settings.vocab_only:
            raise NoModelError("Load a model before measuring it.")
        n_ctx = int(llama.n_ctx())
        if prompt_tokens + generate_tokens > n_ctx:
            raise DeskError(f"{prompt_tokens}+{generate_tokens} tokens do not fit the {n_ctx}-token context.")
        filler = vocab.encode(" the quick brown fox jumps over the lazy dog", special=False)
        prompt = [vocab.bos_id, *(filler * (prompt_tokens // len(filler) + 1))[: prompt_tokens - 1]]
        llama.reset()
        start = time.perf_counter()
        if bare:
            produced = 0
            first = 0.0
            for _token in llama.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
                produced += 1
                if produced == 1:
                    first = time.perf_counter()
                if produced >= generate_tokens:
                    break
            end = time.perf_counter()
            return SpeedSample(prompt_tokens, produced, first - start, end - first, bare=True)
        text = vocab.decode(prompt[1:], special=False)
        request = GenerationRequest(
            (Message("user", text),),
            SamplingSettings(temperature=0.0, top_k=1, repeat_penalty=1.0, max_new_tokens=generate_tokens),
            chat_format="plain",
        )
        generation = self.generate(request)
        generation.run_to_end()
        stats = generation.stats
        assert stats is not None
        decode = stats.total_time_s - stats.time_to_first_token_s
        return SpeedSample(stats.prompt_tokens_evaluated, stats.generated_tokens, stats.time_to_first_token_s, decode)

    def measure_parallel(self, sequences: int, *, prompt_tokens: int = 32, generate_tokens: int = 32) -> float:
        """Aggregate generation tokens/s for ``sequences`` greedy streams decoded together: one llama.cpp
        batch per step carries one token of every sequence (several sequence ids per decode).

        A second context is created on the loaded weights for this, so the chat context is untouched.
        """
        import ctypes

        import llama_cpp
        import numpy as np

        llama, vocab = self._llama, self._vocab
        if llama is None or vocab is None or self.settings.vocab_only:
            raise NoModelError("Load a model before measuring it.")
        per_sequence = prompt_tokens + generate_tokens + 8
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_sequence * sequences
        params.n_batch = max(prompt_tokens * sequences, sequences)
        params.n_ubatch = params.n_batch
        params.n_seq_max = sequences
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.settings.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k = params.type_v = KV_CACHE_TYPES[self.settings.kv_type]
        if self.settings.n_threads:
            params.n_threads = params.n_threads_batch = self.settings.n_threads
        model = llama.model
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise DeskError(f"llama.cpp could not create a context for {sequences} parallel sequences.")
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, sequences)
        n_vocab = vocab.size

        def decode(items: list[tuple[int, int, int, bool]]) -> None:
            batch.n_tokens = len(items)
            for i, (token, position, sequence, wants_logits) in enumerate(items):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence
                batch.logits[i] = wants_logits
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise DeskError("llama.cpp could not decode a parallel batch.")

        def argmax(index: int) -> int:
            pointer = llama_cpp.llama_get_logits_ith(ctx, index)
            logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
            return int(logits.argmax())

        try:
            filler = vocab.encode(" the quick brown fox jumps over the lazy dog", special=False)
            prompt = [vocab.bos_id, *(filler * (prompt_tokens // len(filler) + 1))[: prompt_tokens - 1]]
            decode([(t, p, s, p == len(prompt) - 1) for s in range(sequences) for p, t in enumerate(prompt)])
            last = [argmax(s * len(prompt) + len(prompt) - 1) for s in range(sequences)]
            start = time.perf_counter()
            for step in range(generate_tokens):
                decode([(last[s], len(prompt) + step, s, True) for s in range(sequences)])
                last = [argmax(s) for s in range(sequences)]
            elapsed = time.perf_counter() - start
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
        return sequences * generate_tokens / elapsed

    # -- prompts ---------------------------------------------------------------------------------

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """The exact token ids the runner would feed for ``messages`` (no context policy applied)."""
        return self.chat_format.encode(messages, self.vocab)

    # -- generation ------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Generation:
        """A lazy stream of the reply to ``request``; nothing runs until it is iterated."""
        if request.context_policy not in POLICIES:
            raise DeskError(f"Unknown context policy {request.context_policy!r}; use one of {', '.join(POLICIES)}.")
        return Generation(self, request)

    def cancel(self) -> None:
        """Stop the running generation, if any, within one token. Safe from any thread."""
        current = self._current
        if current is not None:
            current.cancel()

    def _run(self, generation: Generation) -> Iterator[str]:
        if self._llama is None or self._vocab is None or self._format is None:
            raise NoModelError("No model is loaded; load one before chatting.")
        if self.settings.vocab_only:
            raise NoModelError("The model was opened for its tokenizer only; load it fully to generate.")
        if not self._busy.acquire(blocking=False):
            raise EngineBusyError("The model is still answering another request; wait for it or stop it first.")
        self._current = generation
        try:
            yield from self._stream(generation)
        finally:
            self._current = None
            self._busy.release()

    def _stream(self, generation: Generation) -> Iterator[str]:
        llama, vocab, chat_format = self._llama, self._vocab, self._format
        assert llama is not None and vocab is not None and chat_format is not None
        request, sampling = generation.request, generation.request.sampling
        if request.chat_format is not None:
            chat_format = get_format(request.chat_format)
        n_ctx = int(llama.n_ctx())
        fitted = fit_prompt(
            request.messages,
            chat_format,
            vocab,
            n_ctx=n_ctx,
            reserve=reply_reserve(n_ctx, sampling.max_new_tokens),
            policy=request.context_policy,
        )
        generation.prompt = fitted
        prompt = list(fitted.tokens)
        seed = sampling.seed if sampling.seed is not None else self.settings.seed
        llama.set_seed(seed if seed is not None else random.randrange(2**31))
        llama.cancel_event = generation.cancel_event
        llama.evaluated = 0
        decoder = TokenTextDecoder()
        stops = StopStringFilter(sampling.stop)
        strip_leading = chat_format.is_chat
        start = time.perf_counter()
        first_token_at = 0.0
        prompt_evaluated = 0
        reason = STOP_MAX_TOKENS
        tokens = llama.generate(
            prompt,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
        )
        try:
            for token in tokens:
                if not first_token_at:
                    first_token_at = time.perf_counter()
                    prompt_evaluated = llama.evaluated
                if generation.cancel_event.is_set():
                    reason = STOP_CANCELLED
                    break
                if vocab.is_end_of_generation(token):
                    reason = STOP_EOS
                    break
                generation.tokens_generated += 1
                generation.token_ids.append(token)
                text, stopped = stops.push(decoder.decode(vocab.token_bytes(token)))
                if strip_leading and text:
                    text = text.lstrip()
                    strip_leading = not text
                if text:
                    generation.text += text
                    yield text
                if stopped:
                    reason = STOP_STRING
                    break
                if sampling.max_new_tokens and generation.tokens_generated >= sampling.max_new_tokens:
                    reason = STOP_MAX_TOKENS
                    break
                if llama.n_tokens >= n_ctx:
                    reason = STOP_CONTEXT_FULL
                    break
            else:
                reason = STOP_CONTEXT_FULL
        except _Cancelled:
            reason = STOP_CANCELLED
        finally:
            tokens.close()
            llama.cancel_event = None
        if reason != STOP_STRING and reason != STOP_CANCELLED:
            tail = stops.flush() + decoder.flush()
            if strip_leading:
                tail = tail.lstrip()
            if tail:
                generation.text += tail
                yield tail
        end = time.perf_counter()
        if not first_token_at:
            prompt_evaluated = llama.evaluated
        prompt_time = (first_token_at or end) - start
        decode_time = end - first_token_at if first_token_at else 0.0
        generation.stats = GenerationStats(
            prompt_tokens=len(prompt),
            prompt_tokens_cached=len(prompt) - prompt_evaluated,
            prompt_tokens_evaluated=prompt_evaluated,
            generated_tokens=generation.tokens_generated,
            time_to_first_token_s=round(prompt_time, 4),
            prompt_tokens_per_s=round(prompt_evaluated / prompt_time, 2) if prompt_time > 0 else 0.0,
            generation_tokens_per_s=round((generation.tokens_generated - 1) / decode_time, 2)
            if decode_time > 0 and generation.tokens_generated > 1
            else 0.0,
            total_time_s=round(end - start, 4),
            stop_reason=reason,
            context_used=int(llama.n_tokens),
            context_size=n_ctx,
            dropped_messages=len(fitted.dropped),
        )


def _tuned(path: Path) -> dict[str, int]:
    """What `bench --tune` found fastest for this file (empty when it never ran)."""
    from app.core.bench import tuned_settings

    return tuned_settings(path)


def _validate_settings(settings: LoadSettings) -> None:
    check_kv_settings(settings.kv_type, settings.flash_attn)
    if settings.n_ctx < 64:
        raise DeskError(f"A context of {settings.n_ctx} tokens is too small; use at least 512.")
    if settings.chat_format is not None and settings.chat_format not in FORMATS:
        raise DeskError(f"Unknown prompt format {settings.chat_format!r}; use one of {', '.join(FORMATS)}.")
