"""GUI tests collect Python garbage on the GUI thread, as the app does (see app/gui/gc_thread.py); windows open
on the demo model or the tiny Mixtral."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gui.helpers import open_window


@pytest.fixture(scope="package", autouse=True)
def garbage_on_the_gui_thread(qapp):
    from app.gui.gc_thread import GuiThreadGarbageCollector

    collector = GuiThreadGarbageCollector(qapp)
    yield collector
    collector.stop()


@pytest.fixture
def demo_window(qtbot, demo_model: Path):
    window = open_window(qtbot, demo_model)
    window.temperature.setValue(0.0)
    window.max_tokens.setValue(48)
    return window


@pytest.fixture
def tiny_window(qtbot, tiny_v1: dict[str, Path]):
    window = open_window(qtbot, tiny_v1["Q4_0"])
    window.max_tokens.setValue(24)
    return window
