"""Every way a model file can fail to load ends in one ModelLoadError with a message a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import ModelLoadError
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from quant.tiny import TinyMixtralSpec, write_f16


def load_error(path: Path, **settings: object) -> ModelLoadError:
    engine = EngineHost()
    with pytest.raises(ModelLoadError) as caught:
        engine.load(LoadSettings(model_path=str(path), **settings))  # type: ignore[arg-type]
    assert not engine.loaded
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.gguf")
    assert err.reason == "missing" and "not found" in str(err)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert err.reason == "missing" and "folder" in str(err)


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"PK\x03\x04zipfile", b"\x00" * 64])
def test_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    err = load_error(path)
    assert err.reason == "not_gguf" and "not a GGUF" in str(err)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, tiny_v1: dict[str, Path], fraction: float) -> None:
    data = tiny_v1["Q4_K_M"].read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    err = load_error(path)
    assert err.reason == "truncated"
    assert "download it again" in str(err)
    assert err.detail  # llama.cpp's own words are kept for the details view


def test_truncated_inside_the_header(tmp_path: Path, tiny_v1: dict[str, Path]) -> None:
    path = tmp_path / "header-cut.gguf"
    path.write_bytes(tiny_v1["Q4_K_M"].read_bytes()[:4096])
    err = load_error(path)
    assert err.reason in ("truncated", "failed")
    assert path.name in str(err)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_f16(TinyMixtralSpec(architecture="mixtral9000", n_layer=1), tmp_path / "alien.gguf")
    err = load_error(path)
    assert err.reason == "unsupported_arch"
    assert "mixtral9000" in str(err)


def test_out_of_memory(tiny_v1: dict[str, Path]) -> None:
    # a KV cache of ~2 billion tokens needs terabytes: llama.cpp's allocation fails and we say why
    err = load_error(tiny_v1["Q4_0"], n_ctx=2_000_000_000)
    assert err.reason == "out_of_memory"
    assert "Not enough memory" in str(err) and "context" in str(err)


def test_engine_still_works_after_a_failed_load(tmp_path: Path, tiny_v1: dict[str, Path]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 100)
    engine = EngineHost()
    with pytest.raises(ModelLoadError):
        engine.load(LoadSettings(model_path=str(bad)))
    info = engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), n_ctx=256))
    assert info.expert_count == 8
