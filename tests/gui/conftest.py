"""GUI tests collect Python garbage on the GUI thread, as the app does (see app/gui/gc_thread.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def garbage_on_the_gui_thread(qapp):
    from app.gui.gc_thread import GuiThreadGarbageCollector

    collector = GuiThreadGarbageCollector(qapp)
    yield
    collector.stop()
