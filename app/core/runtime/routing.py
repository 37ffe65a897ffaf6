"""Which of the experts Mixtral's router picks, per layer and per token.

llama.cpp computes the choice in graph tensors named ``ffn_moe_topk-<layer>`` (the chosen expert ids) and
``ffn_moe_probs-<layer>`` (the router's probabilities). A context created with an eval callback can read them
after each step on the CPU backend (GPU backends copy them to the host through ``ggml_backend_tensor_get``,
which is supported but not tested here). The callback splits the graph, so tracing is opt-in and runs on its
own context over the engine's weights; ``python -m app.core.runtime.routing`` measures the slowdown.
"""

from __future__ import annotations

import ctypes
import math
import pathlib
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from app.core.errors import DeskError, NoModelError
from app.core.runtime.host import EngineHost
from app.core.runtime.loading import LoadedModel
from app.core.runtime.native import Batch, NativeContext, SamplerChain
from app.core.runtime.types import SamplingSettings

_TOPK = "ffn_moe_topk-"
_PROBS = "ffn_moe_probs-"


@dataclass(frozen=True)
class TokenRoute:
    """One token: its text, whether it was in the prompt, and per layer the chosen experts and their weights."""

    token: int
    text: str
    in_prompt: bool
    experts: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class LayerBalance:
    layer: int
    shares: tuple[float, ...]  # share of routed slots per expert
    entropy_bits: float  # log2(n_expert) = perfectly even
    max_share: float
    min_share: float
    unused: tuple[int, ...]


@dataclass(frozen=True)
class RoutingTrace:
    """A traced prompt and reply."""

    n_layer: int
    n_expert: int
    n_expert_used: int
    tokens: tuple[TokenRoute, ...]
    seconds: float
    counts: tuple[tuple[int, ...], ...] = field(default=())  # layers x experts

    def balance(self) -> list[LayerBalance]:
        result = []
        for layer, row in enumerate(self.counts):
            total = sum(row) or 1
            shares = tuple(c / total for c in row)
            entropy = -sum(s * math.log2(s) for s in shares if s > 0)
            result.append(
                LayerBalance(
                    layer, shares, entropy, max(shares), min(shares), tuple(e for e, c in enumerate(row) if c == 0)
                )
            )
        return result

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["balance"] = [asdict(b) for b in self.balance()]
        return data


def _ggml() -> Any:
    import llama_cpp

    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


def _read_2d(lib: Any, tensor: int, dtype: Any) -> np.ndarray:
    """A 2-D (possibly strided view) tensor as a dense [rows=ne1, cols=ne0] array."""
    words = ctypes.cast(tensor, ctypes.POINTER(ctypes.c_int64))
    ne0, ne1 = int(words[2]), int(words[3])  # struct ggml_tensor: type, buffer, ne[4], nb[4], ...
    nb0, nb1 = int(words[6]), int(words[7])
    size = lib.ggml_nbytes(tensor)
    raw = (ctypes.c_char * size)()
    lib.ggml_backend_tensor_get(tensor, raw, 0, size)
    flat = np.frombuffer(bytes(raw), dtype=np.uint8)
    item = np.dtype(dtype).itemsize
    out = np.empty((ne1, ne0), dtype=dtype)
    for row in range(ne1):
        for col in range(ne0):
            start = row * nb1 + col * nb0
            out[row, col] = np.frombuffer(flat[start : start + item].tobytes(), dtype=dtype)[0]
    return out


def trace_routing(
    host: EngineHost, tokens: list[int], *, generate: int = 16, seed: int = 0, prompt_length: int | None = None
) -> RoutingTrace:
    """Run ``tokens`` (a prompt, BOS included) and ``generate`` more tokens (greedy, or ``seed``-sampled at
    temperature 0.8 when ``seed`` > 0) on the host, recording every layer's choice for every token.

    To inspect a reply that was already generated, pass prompt + reply tokens with ``generate=0`` and
    ``prompt_length``: the same tokens through the same weights take the same routes.
    """
    return host.with_model(lambda loaded: _trace(loaded, tokens, generate, seed, prompt_length))


def trace_routing_async(
    host: EngineHost, tokens: list[int], *, generate: int = 16, seed: int = 0, prompt_length: int | None = None
) -> Future[RoutingTrace]:
    """:func:`trace_routing` without waiting: the future completes on the host's thread."""
    return host.submit_call(
        lambda: trace_routing(host, tokens, generate=generate, seed=seed, prompt_length=prompt_length)
    )


def _trace(loaded: LoadedModel, tokens: list[int], generate: int, seed: int, prompt_length: int | None) -> RoutingTrace:
    import llama_cpp

    vocab, info = loaded.vocab, loaded.info
    if loaded.context is None:
        raise NoModelError("Load the model fully (not only its tokenizer) before tracing it.")
    if not info.expert_count:
        raise DeskError(f"{info.name} is not a mixture-of-experts model: there is no router to inspect.")
    n_layer, n_expert, n_used = info.n_layer, info.expert_count, info.expert_used_count
    lib = _ggml()
    step: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def observe(tensor: int, ask: bool, user_data: Any) -> bool:
        name = (lib.ggml_get_name(tensor) or b"").decode()
        wanted = (name.startswith(_TOPK) or name.startswith(_PROBS)) and "(" not in name
        if ask:
            return wanted
        if wanted:
            layer = int(name.rsplit("-", 1)[1])
            ids, probs = step.get(layer, (np.empty(0), np.empty(0)))
            if name.startswith(_TOPK):
                ids = _read_2d(lib, tensor, np.int32)
            else:
                probs = _read_2d(lib, tensor, np.float32)
            step[layer] = (ids, probs)
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(observe)
    n_batch = max(len(tokens), 1)
    context = NativeContext(
        loaded.model,
        n_ctx=len(tokens) + generate + 8,
        n_batch=n_batch,
        n_threads=loaded.settings.n_threads,
        cb_eval=callback,
    )
    batch = Batch(n_batch, 1)
    sampling = SamplingSettings(temperature=0.8 if seed > 0 else 0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    sampler = SamplerChain(sampling, vocab.size, seed)
    routes: list[TokenRoute] = []
    counts = np.zeros((n_layer, n_expert), dtype=np.int64)
    prompt_length = len(tokens) if prompt_length is None else prompt_length

    def run(chunk: list[int], start: int, in_prompt: bool) -> None:
        step.clear()
        batch.clear()
        for i, token in enumerate(chunk):
            batch.add(token, start + i, 0, True)  # every token's last-layer routing is computed only for output rows
        if context.decode(batch) != 0:
            raise DeskError("llama.cpp could not decode while tracing.")
        for i, token in enumerate(chunk):
            experts, weights = [], []
            for layer in range(n_layer):
                ids, probs = step[layer]
                chosen = tuple(int(e) for e in ids[i][:n_used])
                experts.append(chosen)
                weights.append(tuple(float(probs[i][e]) for e in chosen) if probs.size else ())
                counts[layer, list(chosen)] += 1
            text = vocab.token_bytes(token).decode("utf-8", errors="replace")
            routes.append(
                TokenRoute(token, text, in_prompt and start + i < prompt_length, tuple(experts), tuple(weights))
            )

    started = time.perf_counter()
    try:
        run(tokens, 0, True)
        position = len(tokens)
        for _ in range(generate):
            token = sampler.sample(context, len(tokens) - 1 if position == len(tokens) else 0)
            if vocab.is_end_of_generation(token):
                break
            run([token], position, False)
            position += 1
    finally:
        sampler.close()
        batch.close()
        context.close()
    elapsed = time.perf_counter() - started
    return RoutingTrace(
        n_layer, n_expert, n_used, tuple(routes), elapsed, tuple(tuple(int(c) for c in row) for row in counts)
    )
