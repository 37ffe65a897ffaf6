"""Local models: import (copy, move, in place), other apps' stores, verification and removal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.errors import DeskError
from app.core.models.local import (
    import_model,
    installed_models,
    register,
    registered,
    remove_model,
    resolve_model,
    scan_other_apps,
    sha256_file,
    verify_file,
)
from app.core.storage import paths
from quant.tiny import TinyMixtralSpec, write_f16


@pytest.fixture
def model_file(tmp_path: Path, tiny_v1: dict[str, Path]) -> Path:
    path = tmp_path / "outside" / "mine.gguf"
    path.parent.mkdir()
    path.write_bytes(tiny_v1["Q2_K"].read_bytes())
    return path


def test_import_copy_keeps_the_original(model_file: Path) -> None:
    placed = import_model(model_file, "copy")
    assert placed == paths.models_dir() / "imported" / "mine.gguf"
    assert model_file.exists() and sha256_file(placed) == sha256_file(model_file)
    assert installed_models() == [placed] and resolve_model("mine") == placed


def test_import_move(model_file: Path) -> None:
    placed = import_model(model_file, "move")
    assert placed.exists() and not model_file.exists()


def test_import_in_place_copies_nothing(model_file: Path) -> None:
    placed = import_model(model_file, "link")
    assert placed == model_file.resolve()
    assert not (paths.models_dir() / "imported").exists()
    assert registered()[str(placed)].external and placed in installed_models()
    assert remove_model(placed) == [] and model_file.exists()  # forgotten, not deleted
    assert placed not in installed_models()


def test_import_refuses_a_bad_file_and_names_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(DeskError, match=r"Cannot import bad\.gguf"):
        import_model(bad)
    assert not installed_models()


def test_importing_a_split_model_takes_every_part(tmp_path: Path) -> None:
    first = write_f16(TinyMixtralSpec(n_layer=1), tmp_path / "big.gguf", split_max_tensors=7)
    placed = import_model(first, "copy")
    assert sorted(p.name for p in placed.parent.iterdir()) == sorted(p.name for p in tmp_path.glob("big-*.gguf"))
    assert installed_models() == [placed]  # one model, shown by its first part
    assert len(remove_model(placed)) == len(list(tmp_path.glob("big-*.gguf")))


def test_other_apps_stores_are_found(tmp_path: Path, tiny_v1: dict[str, Path]) -> None:
    gguf = tiny_v1["Q2_K"].read_bytes()
    hf = tmp_path / "hf"
    snapshot = hf / "models--someone--Mixtral-GGUF" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "mixtral.Q2_K.gguf").write_bytes(gguf)
    (snapshot / "README.md").write_text("not a model")
    lms = tmp_path / "lmstudio"
    (lms / "someone" / "repo").mkdir(parents=True)
    (lms / "someone" / "repo" / "m.gguf").write_bytes(gguf)
    ollama = tmp_path / "ollama"
    (ollama / "blobs").mkdir(parents=True)
    (ollama / "blobs" / "sha256-aaaa").write_bytes(gguf)
    (ollama / "blobs" / "sha256-bbbb").write_text("{}")  # a config blob, not a model
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "mixtral" / "8x7b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:aaaa"},
                    {"mediaType": "application/vnd.ollama.image.params", "digest": "sha256:bbbb"},
                ]
            }
        )
    )
    found = scan_other_apps({"huggingface": [hf], "lmstudio": [lms], "ollama": [ollama]})
    assert {(f.app, f.name) for f in found} == {
        ("Hugging Face cache", "someone/Mixtral-GGUF/mixtral.Q2_K.gguf"),
        ("LM Studio", "someone/repo/m.gguf"),
        ("Ollama", "mixtral:8x7b"),
    }
    blob = next(f.path for f in found if f.app == "Ollama")
    assert import_model(blob, "link") == blob.resolve()  # usable in place, no 26 GB copy


def test_verify_finds_damage(model_file: Path) -> None:
    placed = import_model(model_file, "copy")
    assert verify_file(placed).ok is None  # nothing published to compare with
    register(placed, sha256=sha256_file(placed), source="test")
    assert verify_file(placed).ok is True
    data = bytearray(placed.read_bytes())
    data[-1] ^= 0xFF
    placed.write_bytes(bytes(data))
    result = verify_file(placed)
    assert result.ok is False and "damaged" in result.message


def test_a_malformed_registry_loses_no_model_files(model_file: Path) -> None:
    placed = import_model(model_file, "copy")
    (paths.data_dir() / "models.json").write_text("{broken")
    assert registered() == {} and installed_models() == [placed]
