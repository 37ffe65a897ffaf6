"""Python garbage holding Qt objects is collected on the GUI thread, never on a worker."""

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

    def allocate() -> None:  # enough new containers to trip an automatic collection many times over
        junk = [[i] for i in range(200_000)]
        del junk

    worker = threading.Thread(target=allocate, name="worker")
    worker.start()
    worker.join()
    assert ref() is not None and freed_in == []  # the worker did not collect it
    qtbot.waitUntil(lambda: ref() is None, timeout=15_000)
    assert freed_in == [threading.main_thread().name]
