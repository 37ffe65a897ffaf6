"""GGUF header reading with hard limits, and the KV cache size used as a pre-flight check."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.core.gguf import GGUFError, GGUFHeader, read_header
from app.core.planner import kv_cache_bytes, padded_context


def test_reads_the_tiny_mixtral_header(tiny_v1: dict[str, Path]) -> None:
    header = read_header(tiny_v1["Q4_K_M"])
    assert header.architecture == "llama"
    assert header.arch_int("expert_count") == 8 and header.arch_int("expert_used_count") == 2
    assert header.array_lengths["tokenizer.ggml.tokens"] == 32000
    assert header.tensor_count == 2 + 2 * 10 + 1


def _gguf_bytes(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + b"\0" * 20, "not a GGUF"),
        (_gguf_bytes(version=99), "version 99"),
        (_gguf_bytes(kvs=2**60), "corrupted"),
        (_gguf_bytes(tensors=2**40), "corrupted"),
        (_gguf_bytes(kvs=1) + struct.pack("<Q", 2**50), "corrupted"),  # absurd key length
        (_gguf_bytes(kvs=3) + struct.pack("<Q", 4) + b"ke", "truncated"),
    ],
)
def test_bad_headers_fail_fast_with_a_reason(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        read_header(path)


def _mixtral_8x7b_header() -> GGUFHeader:
    metadata: dict[str, object] = {
        "general.architecture": "llama",
        "llama.block_count": 32,
        "llama.embedding_length": 4096,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
    }
    return GGUFHeader(version=3, tensor_count=0, metadata=metadata, array_lengths={})


def test_kv_cache_matches_the_public_mixtral_8x7b_figure() -> None:
    header = _mixtral_8x7b_header()
    assert kv_cache_bytes(header, 1) == 128 * 1024 * 256  # one token still allocates a padded 256
    assert kv_cache_bytes(header, 4096) == 512 * 1024**2  # 128 KiB per token in f16
    assert kv_cache_bytes(header, 4096, "q8_0") == int(512 * 1024**2 * 34 / 64)


def test_context_is_padded_like_llama_cpp() -> None:
    assert [padded_context(n) for n in (1, 256, 257, 4096)] == [256, 256, 512, 4096]
