"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings


@pytest.fixture(scope="package")
def vocab_engines(tiny_v1: dict[str, Path], tiny_v3: dict[str, Path]) -> Iterator[dict[str, EngineHost]]:
    """Engine hosts holding only the tokenizers of the tiny v1 (8x7B) and v3 (8x22B) Mixtrals."""
    engines = {}
    for version, files in (("v1", tiny_v1), ("v3", tiny_v3)):
        engine = EngineHost()
        engine.load(LoadSettings(model_path=str(files["Q4_K_M"]), vocab_only=True))
        engines[version] = engine
    yield engines
    for engine in engines.values():
        engine.close()
