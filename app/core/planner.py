"""Memory planning. For now: the KV cache size llama.cpp will allocate, used as a pre-flight check."""

from __future__ import annotations

from app.core.gguf import GGUFHeader

# bytes per element of each KV cache type (ggml block size / elements per block)
KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
CONTEXT_PADDING = 256  # llama.cpp rounds the context up to a multiple of this


def padded_context(n_ctx: int) -> int:
    """The context length llama.cpp actually allocates for a requested ``n_ctx``."""
    return -(-n_ctx // CONTEXT_PADDING) * CONTEXT_PADDING


def kv_cache_bytes(header: GGUFHeader, n_ctx: int, kv_type: str = "f16") -> int:
    """Bytes of K and V cache for ``n_ctx`` tokens: layers x context x KV heads x head dim x (K + V bytes)."""
    n_layer = header.arch_int("block_count")
    n_embd = header.arch_int("embedding_length")
    n_head = header.arch_int("attention.head_count", 1) or 1
    n_head_kv = header.arch_int("attention.head_count_kv", n_head) or n_head
    key_length = header.arch_int("attention.key_length", n_embd // n_head)
    value_length = header.arch_int("attention.value_length", n_embd // n_head)
    per_element = KV_BYTES_PER_ELEMENT[kv_type]
    per_token_per_layer = n_head_kv * (key_length + value_length) * per_element
    return int(n_layer * padded_context(n_ctx) * per_token_per_layer)
