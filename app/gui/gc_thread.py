"""Python's cyclic garbage collection, run on the GUI thread only.

Automatic collection runs in whichever thread happens to allocate when a threshold trips: a download, the
engine host or a model-manager worker. If the garbage holds Qt objects (a closed dialog, a window caught in
a cycle with a lambda), PySide6 then destroys them off the GUI thread and the process can crash
("Fatal Python error: Segmentation fault ... Garbage-collecting" in a worker). So automatic collection is
turned off while the app runs and a GUI-thread timer collects instead, young generations often and all of
them now and then.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500
FULL_EVERY = 20  # ticks: a full collection every 10 s


class GuiThreadGarbageCollector(QObject):
    """Turns automatic GC off and collects on a timer of ``parent``'s (the GUI) thread; :meth:`stop` undoes it."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._ticks = 0
        self._timer = QTimer(self)
        self._timer.setInterval(INTERVAL_MS)
        self._timer.timeout.connect(self._collect)
        self._timer.start()

    def _collect(self) -> None:
        self._ticks += 1
        if self._ticks % FULL_EVERY == 0:
            gc.collect()
            return
        threshold = gc.get_threshold()[0]
        if gc.get_count()[0] > threshold:
            gc.collect(1)

    def stop(self) -> None:
        """Collect once more here and give collection back to Python."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()
