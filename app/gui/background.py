"""Work off the GUI thread: a function runs on a plain thread and its ``(tag, result, error)`` comes back as a
signal, delivered on the GUI thread (Picard's ``run_task``/``to_main``, Anki's ``QueryOp``)."""

from __future__ import annotations

import contextlib
import queue
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
                result, error = work(), None
            except Exception as err:
                result, error = None, err
            with contextlib.suppress(RuntimeError):  # its window was closed and deleted: nobody is left to tell
                self.done.emit(tag, result, error)

        threading.Thread(target=target, name=f"{self._name}-{tag}", daemon=True).start()


class SerialRunner(QObject):
    """Runs functions one after another on one thread, in the order given (the conversation store's writes and
    the reads that must see them). Each ``on_done(result)`` runs on the GUI thread; a failure goes to
    ``on_error`` when given, else to the ``failed`` signal. Keep it unparented, like ``BackgroundRunner``.

    Signals:
        failed(object): an exception no ``on_error`` took
        idle(): every queued function has run and its ``on_done`` has been called
    """

    failed = Signal(object)
    idle = Signal()
    _finished = Signal(object, object, object)  # (callback, result, error), delivered on the GUI thread

    def __init__(self, name: str = "serial") -> None:
        super().__init__()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pending = 0  # counted on the GUI thread only
        self._closed = False
        self._finished.connect(self._deliver)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Functions queued or running whose results have not been delivered yet."""
        return self._pending

    def run(
        self,
        work: Callable[[], Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue ``work()``; ``on_done(result)`` (or ``on_error(error)``) follows on the GUI thread."""
        self._pending += 1

        def job() -> None:
            try:
                result = work()
            except Exception as err:
                self._finished.emit(on_error or self.failed.emit, None, err)
            else:
                self._finished.emit(on_done, result, None)

        self._jobs.put(job)

    def wait_until_idle(self, timeout_s: float = 10.0) -> None:
        """For scripts driving a window (screenshots, benchmarks), never the GUI itself: run the event loop until
        everything queued is done and shown."""
        from PySide6.QtCore import QEventLoop, QTimer

        loop, deadline = QEventLoop(), QTimer()
        deadline.setSingleShot(True)
        deadline.timeout.connect(loop.quit)
        self.idle.connect(loop.quit)
        deadline.start(int(timeout_s * 1000))
        while self._pending and deadline.isActive():
            loop.exec()
        self.idle.disconnect(loop.quit)

    def close(self, timeout_s: float = 10.0) -> None:
        """Run what is queued, then stop the thread (waits at most ``timeout_s``; called when the app closes)."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        self._closed = True  # results still on their way find no window to show them in

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _deliver(self, callback: Callable[[Any], None] | None, result: Any, error: BaseException | None) -> None:
        self._pending -= 1
        try:
            if callback is not None and not self._closed:
                callback(error if error is not None else result)
        finally:
            if self._pending == 0:
                self.idle.emit()
