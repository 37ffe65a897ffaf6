"""Work off the GUI thread: a function runs on a plain thread and its ``(tag, result, error)`` comes back as a
signal, delivered on the GUI thread (Picard's ``run_task``/``to_main``, Anki's ``QueryOp``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal


class BackgroundRunner(QObject):
    """Runs functions on plain threads. Keep it unparented (its owner holds a reference), so a thread that
    finishes after its window was closed still finds the object it reports to.

    Signals:
        done(str, object, object): ``(tag, result, error)``; ``error`` is the exception object or None.
    """

    done = Signal(str, object, object)

    def __init__(self, name: str = "background", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._name = name

    def run(self, tag: str, work: Callable[[], Any]) -> None:
        """Start ``work()``; ``done(tag, result, error)`` follows on the GUI thread."""

        def target() -> None:
            try:
                result = work()
            except Exception as err:
                self.done.emit(tag, None, err)
            else:
                self.done.emit(tag, result, None)

        threading.Thread(target=target, name=f"{self._name}-{tag}", daemon=True).start()
