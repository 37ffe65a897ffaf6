"""Python's cyclic garbage collection, run on the GUI thread only, and never while the app is busy.

Automatic collection runs in whichever thread happens to allocate when a threshold trips: a download, the
engine host or a model-manager worker. If the garbage holds Qt objects (a closed dialog, a window caught in
a cycle with a lambda), PySide6 then destroys them off the GUI thread and the process can crash
("Fatal Python error: Segmentation fault ... Garbage-collecting" in a worker). So automatic collection is
turned off while the app runs and a GUI-thread timer collects instead: young generations often (well under a
millisecond), all of them now and then.

A full collection walks every tracked object, and the app has ~50,000 of them once it is up (modules, classes,
enums, widgets): 15-60 ms on the GUI thread, a visible stall. So the objects that exist when the collector
starts are frozen (``gc.freeze``: never walked again), and full collections wait until the app is not
``busy`` (no reply streaming, model loading or download running), when a pause shows nowhere.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500
FULL_EVERY = 20  # ticks: a full collection every 10 s at most, when the app is not busy


class GuiThreadGarbageCollector(QObject):
    """Turns automatic GC off and collects on a timer of ``parent``'s (the GUI) thread; :meth:`stop` undoes it.

    ``busy`` (settable once the window exists) says when a full collection must wait."""

    def __init__(
        self,
        parent: QObject,
        busy: Callable[[], bool] | None = None,
        *,
        interval_ms: int = INTERVAL_MS,
        full_every: int = FULL_EVERY,
    ) -> None:
        super().__init__(parent)
        self.busy: Callable[[], bool] = busy or (lambda: False)
        self.full_every = full_every
        self.tick_count = 0
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.collect()
        gc.freeze()  # what exists at start lives as long as the app: full collections no longer walk it
        self._ticks = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._collect)
        self._timer.start()

    def _collect(self) -> None:
        self.tick_count += 1
        self._ticks += 1
        if self._ticks >= self.full_every and not self.busy():
            self._ticks = 0
            gc.collect()
            return
        threshold = gc.get_threshold()[0]
        if gc.get_count()[0] > threshold:
            gc.collect(1)

    def stop(self) -> None:
        """Collect once more here and give collection back to Python."""
        self._timer.stop()
        gc.unfreeze()
        gc.collect()
        if self._was_enabled:
            gc.enable()
