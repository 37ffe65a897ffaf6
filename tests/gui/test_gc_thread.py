"""Python garbage holding Qt objects is collected on the GUI thread, never on a worker, and a full collection
waits until the app is not busy."""

from __future__ import annotations

import gc
import threading
import weakref

from PySide6.QtCore import QObject


class _Cycle:
    """An object that refers to itself (only the cyclic collector frees it) and holds a Qt object."""

    def __init__(self) -> None:
        self.me = self
        self.qt = QObject()


def test_a_cycle_with_a_qt_object_is_freed_on_the_gui_thread(qtbot) -> None:
    assert not gc.isenabled()  # the package's collector, as in the app
    freed_in: list[str] = []
    cycle = _Cycle()
    ref = weakref.ref(cycle, lambda _ref: freed_in.append(threading.current_thread().name))
    del cycle

    kept: list[list[int]] = []

    def allocate() -> None:  # enough new containers to trip an automatic collection many times over
        kept.extend([i] for i in range(200_000))  # kept alive: the GUI thread's next young collection is due

    worker = threading.Thread(target=allocate, name="worker")
    worker.start()
    worker.join()
    assert ref() is not None and freed_in == []  # the worker did not collect it
    qtbot.waitUntil(lambda: ref() is None, timeout=15_000)
    assert freed_in == [threading.main_thread().name]
    kept.clear()


def test_a_full_collection_waits_until_the_app_is_not_busy(qtbot, garbage_on_the_gui_thread) -> None:
    from app.gui.gc_thread import GuiThreadGarbageCollector

    busy = True
    garbage_on_the_gui_thread.busy = lambda: True  # the package's collector stays out of the way
    owner = QObject()
    collector = GuiThreadGarbageCollector(owner, lambda: busy, interval_ms=5, full_every=4)
    try:
        holder = [_Cycle()]
        ref = weakref.ref(holder[0])
        gc.collect(1)  # it survives a young collection: old now, only a full collection reaches it
        holder.clear()
        assert ref() is not None
        qtbot.waitUntil(lambda: collector.tick_count >= 5 * collector.full_every, timeout=10_000)
        assert ref() is not None  # busy all along: no full collection
        busy = False
        qtbot.waitUntil(lambda: ref() is None, timeout=10_000)
    finally:
        collector.stop()
        garbage_on_the_gui_thread.busy = lambda: False
