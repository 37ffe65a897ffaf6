"""Starting the desktop app: QApplication, theme, main window, and stray exceptions shown, not lost."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from app import APP_NAME, __version__

_STARTED = time.perf_counter()


def run(argv: Sequence[str] | None = None, model: str | None = None) -> int:
    """Open the main window and run the event loop; returns the exit code."""
    from PySide6.QtWidgets import QApplication

    from app.core.storage.settings import load_settings
    from app.gui.main_window import MainWindow
    from app.gui.theme import apply_theme

    app = QApplication.instance() or QApplication(list(argv or sys.argv[:1]))
    app.setApplicationName(APP_NAME)
    app.setApplicationVersion(__version__)
    from app.gui.gc_thread import GuiThreadGarbageCollector

    collector = GuiThreadGarbageCollector(app)  # Qt objects are never collected on a worker thread
    from importlib import resources

    from PySide6.QtGui import QIcon

    app.setWindowIcon(QIcon(str(resources.files("resources").joinpath("icon.png"))))
    settings = load_settings().settings
    apply_theme(settings.theme, settings.font_size)
    window = MainWindow(model_path=model)
    collector.busy = window.is_busy  # full collections wait for a quiet moment
    _route_stray_exceptions(window)
    window.show()
    if os.environ.get("MIXTRAL_DESK_EXIT_AFTER_SHOW"):  # cold-start measurement: report and leave
        from PySide6.QtCore import QTimer

        def report() -> None:
            print(f"window shown {time.perf_counter() - _STARTED:.2f} s after start", flush=True)
            window.close()

        QTimer.singleShot(0, report)
    return int(app.exec())


def _route_stray_exceptions(window: object) -> None:
    """Exceptions nobody caught (GUI thread or a worker) end in the window's error dialog."""
    from PySide6.QtCore import QTimer

    def show(error: BaseException) -> None:
        QTimer.singleShot(0, lambda: window.show_error(error))  # type: ignore[attr-defined]

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        sys.__excepthook__(kind, error, trace)
        show(error)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        sys.__excepthook__(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        if args.exc_value is not None:
            show(args.exc_value)

    sys.excepthook = hook
    threading.excepthook = thread_hook
