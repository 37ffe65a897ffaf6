"""The runtime's plain data: how to load a model, how to sample, what to answer, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from app.core.context import POLICY_ROLLING
from app.core.prompts import Message

KV_CACHE_TYPES: dict[str, int] = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids

STOP_EOS = "eos"
STOP_STRING = "stop_string"
STOP_MAX_TOKENS = "max_tokens"
STOP_CONTEXT_FULL = "context_full"
STOP_CANCELLED = "cancelled"
STOP_TOOL_CALLS = "tool_calls"  # the reply ended after calling tools (see ReplyTicket.tool_calls)
STOP_ERROR = "error"

TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class LoadSettings:
    """How to load a model.

    ``n_gpu_layers``: layers to offload, ``-1`` = all, ``None`` = the memory planner decides (none on a
    CPU-only build). ``kv_type`` applies to both K and V; a quantized V cache needs flash attention.
    ``n_ctx`` is the longest conversation one sequence may hold. Up to ``n_parallel`` sequences (the
    window's chat, API requests) are decoded together in one batch; each has its own ``n_ctx`` KV cells
    (so a reply is the same whatever runs beside it, and the KV cache is ``n_ctx x n_parallel`` tokens: the
    memory the planner counts). A finished sequence keeps its cells for prefix reuse until another request
    needs the sequence (least recently used first).
    """

    model_path: str
    n_ctx: int = 4096
    n_gpu_layers: int | None = None
    flash_attn: bool = True  # llama.cpp's own default (auto) turns it on wherever the backend has it
    kv_type: str = "f16"
    n_threads: int | None = None
    n_batch: int = 512
    seed: int | None = None
    chat_format: str | None = None  # None = detect from the GGUF
    vocab_only: bool = False  # tokenizer and metadata only: enough to build prompts, not to generate
    n_parallel: int = 2
    rpc_workers: tuple[str, ...] = ()  # llama.cpp RPC workers ("host:port") to offload layers to, in order
    # keep the experts of the first N layers in RAM with the rest offloaded (llama.cpp's --n-cpu-moe); None =
    # the planner compares that with whole layers and picks the faster; 0 = whole layers only
    cpu_moe: int | None = None
    # RAM for the KV cells of prompts no sequence holds any more (see prompt_cache.py); None = a quarter of the
    # RAM free beyond the model, at most 4 GiB; 0 = off
    prompt_cache_mib: int | None = None

    @property
    def total_kv_cells(self) -> int:
        return self.n_ctx * self.n_parallel

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for one reply. ``temperature`` 0 is greedy; ``max_new_tokens`` 0 = until the context is full.

    ``ignore_eos`` keeps generating past the end-of-text token (benchmarks, as llama-bench does).
    """

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already in the text
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    grammar: str = ""  # GBNF the reply must follow (root rule "root"); "" = free text
    grammar_triggers: tuple[int, ...] = ()  # tokens that switch the grammar on (until one comes: free text)
    max_new_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int = -1  # -1: none; 0: each token's log-probability; N: and the N likeliest tokens

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenProb:
    """A token, its text (bytes, possibly part of a character) and its log-probability under the model."""

    token: int
    piece: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token's log-probability and the likeliest tokens at its place (the model's own
    distribution, before sampling settings such as temperature or a grammar)."""

    chosen: TokenProb
    top: tuple[TokenProb, ...]


@dataclass(frozen=True)
class GenerationRequest:
    """A conversation to answer (or, in plain format, text to continue).

    ``prompt_tokens`` feeds token ids as they are instead of formatting ``messages`` (benchmarks, tracing).
    With ``tools``, ``tool_choice`` says whether the reply may call them (``auto``), must (``required``; only
    ``required_tool`` when set) or must not (``none``); ``parallel_tool_calls`` False allows one call.
    """

    messages: tuple[Message, ...]
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    context_policy: str = POLICY_ROLLING
    chat_format: str | None = None  # None: the model's format; "plain" continues text with a chat model too
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI-style tool definitions the model may call (v3 format only)
    tool_choice: str = "auto"
    required_tool: str = ""
    parallel_tool_calls: bool = True
    prompt_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class GenerationStats:
    """What one reply cost. Token rates are 0.0 when there was nothing to time.

    ``time_to_first_token_s`` counts from submission (so it includes waiting for other requests);
    ``queued_s`` is that waiting alone.
    """

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
    queued_s: float = 0.0

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
    n_parallel: int = 1
    kv_cells: int = 0
    experts_in_ram: int = 0  # offloaded layers whose experts were kept in RAM
    placement: str = ""  # where it runs, short: "CPU", "CUDA 28/33", "RPC 3/3", "CUDA 33/33, experts of 5 in RAM"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostHealth:
    """The engine host's own report: is its worker alive, what is it doing, what waits."""

    alive: bool
    model: str | None
    active: int  # sequences being decoded now
    queued: int  # requests waiting for a free sequence or KV room
    cached_tokens: int  # tokens of finished sequences kept for prefix reuse
    kv_cells: int
    error: str = ""  # the last unexpected failure, if any

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.queued > 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["busy"] = self.busy
        return data
