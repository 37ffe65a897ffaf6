"""Paths come from platformdirs unless MIXTRAL_DESK_HOME moves them; model names resolve predictably."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.errors import NoModelError
from app.core.models.demo import demo_model_path
from app.core.models.local import installed_models, resolve_model
from app.core.storage import paths


def test_home_override_moves_every_path(isolated_home: Path) -> None:
    for folder in (paths.data_dir(), paths.config_dir(), paths.cache_dir(), paths.models_dir()):
        assert isolated_home in folder.parents


def test_platformdirs_are_used_without_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("MIXTRAL_DESK_HOME")
    assert paths.data_dir() == Path(platformdirs.user_data_dir("mixtral-desk", appauthor=False))
    assert paths.config_dir() == Path(platformdirs.user_config_dir("mixtral-desk", appauthor=False))


def test_no_model_and_none_installed_means_the_demo_model() -> None:
    assert resolve_model(None) == demo_model_path()
    assert resolve_model("demo") == demo_model_path()


def test_the_newest_installed_model_is_the_default(tiny_v1: dict[str, Path]) -> None:
    folder = paths.ensure(paths.models_dir())
    older, newer = folder / "older.gguf", folder / "sub" / "newer.gguf"
    newer.parent.mkdir()
    older.write_bytes(tiny_v1["Q2_K"].read_bytes())
    newer.write_bytes(tiny_v1["Q2_K"].read_bytes())
    os.utime(older, (1_000_000, 1_000_000))
    (folder / "big-00002-of-00003.gguf").write_bytes(b"GGUF")  # a later split part is never a model by itself
    assert installed_models() == [newer, older]
    assert resolve_model(None) == newer
    assert resolve_model("older") == older and resolve_model("older.gguf") == older


def test_an_unknown_name_says_what_to_do() -> None:
    with pytest.raises(NoModelError, match="'demo'"):
        resolve_model("mixtral-9000")
