"""GGUF headers: metadata and tensor tables, split models, both expert layouts, and hard limits on bad input."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.errors import ModelLoadError
from app.core.models.gguf import GGUFError, read_header, read_model
from app.core.planning.planner import ModelShape, padded_context
from app.core.prompts import Message
from app.core.runtime.host import EngineHost
from app.core.runtime.types import GenerationRequest, LoadSettings, SamplingSettings
from quant.tiny import TinyMixtralSpec, write_f16


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


def test_context_is_padded_like_llama_cpp() -> None:
    assert [padded_context(n) for n in (1, 256, 257, 4096)] == [256, 256, 512, 4096]


def test_tensor_table_accounts_for_every_byte(tiny_v1: dict[str, Path]) -> None:
    for level in ("F16", "Q2_K", "Q4_K_M", "Q8_0"):
        header = read_header(tiny_v1[level])
        assert header.data_offset + header.data_bytes == tiny_v1[level].stat().st_size
        assert {t.type_name for t in header.tensors} >= {"F32"}
        experts = [t for t in header.tensors if t.is_expert]
        assert len(experts) == 3 * 2 and all(t.layer in (0, 1) for t in experts)


def test_truncated_tensor_data_is_caught_from_the_header(tmp_path: Path, tiny_v1: dict[str, Path]) -> None:
    data = tiny_v1["Q4_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1])
    with pytest.raises(GGUFError, match="incomplete"):
        read_header(cut)


@pytest.fixture(scope="module")
def split_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_f16(TinyMixtralSpec(n_layer=2), tmp_path_factory.mktemp("split") / "model.gguf", split_max_tensors=9)


def test_split_model_is_read_from_any_part(split_model: Path) -> None:
    parts = sorted(split_model.parent.glob("model-*.gguf"))
    assert [p.name for p in parts] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    whole = read_model(parts[1])
    assert len(whole.parts) == 3 and len(whole.tensors) == 23
    assert whole.metadata["llama.expert_count"] == 8


def test_split_model_loads_and_runs_in_llama_cpp(split_model: Path) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(split_model), n_ctx=256))
    text = engine.generate(GenerationRequest((Message("user", "hi"),), SamplingSettings(max_new_tokens=4))).run_to_end()
    assert text


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    first = write_f16(TinyMixtralSpec(n_layer=1), tmp_path / "m.gguf", split_max_tensors=8)
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(GGUFError, match=r"m-00002-of-00002\.gguf"):
        read_model(first)
    with pytest.raises(ModelLoadError, match=r"m-00002-of-00002\.gguf"):
        EngineHost().load(LoadSettings(model_path=str(first)))


def test_both_expert_layouts_give_the_same_plan(tmp_path: Path) -> None:
    merged = read_model(write_f16(TinyMixtralSpec(n_layer=2), tmp_path / "merged.gguf"))
    legacy = read_model(write_f16(TinyMixtralSpec(n_layer=2, legacy_experts=True), tmp_path / "legacy.gguf"))
    assert (merged.expert_layout, legacy.expert_layout) == ("merged", "per-expert")
    a, b = ModelShape.from_gguf(merged), ModelShape.from_gguf(legacy)
    assert a.layer_bytes == b.layer_bytes and a.layer_active_bytes == b.layer_active_bytes
    assert a.active_bytes_per_token < a.weight_bytes


def test_the_old_per_expert_layout_is_refused_with_a_reason(tmp_path: Path) -> None:
    legacy = write_f16(TinyMixtralSpec(n_layer=1, legacy_experts=True), tmp_path / "legacy.gguf")
    with pytest.raises(ModelLoadError) as caught:
        EngineHost().load(LoadSettings(model_path=str(legacy)))
    assert caught.value.reason == "outdated_layout" and "newer conversion" in str(caught.value)


def test_reading_a_header_does_not_import_the_gguf_package(demo_model: Path) -> None:
    # the package's vocab module imports mistral-common, numpy and pydantic: 0.3 s and ~80,000 objects that
    # the GUI's garbage collector then walks in one go (a 46 ms stall while a model loaded)
    code = (
        "import sys; from pathlib import Path; from app.core.models.gguf import read_header, ggml_type_name; "
        f"header = read_header(Path({str(demo_model)!r})); "
        "print(ggml_type_name(header.tensors[0].ggml_type), 'gguf' in sys.modules, 'mistral_common' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    kind, package, tokenizers = result.stdout.split()
    assert kind in ("Q4_1", "Q8_0", "Q6_K", "F32") and (package, tokenizers) == ("False", "False")
