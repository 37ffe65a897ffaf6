"""Screenshots of the main window for review: loads the demo model, sends one message, saves PNGs in the
light and dark themes.

    QT_QPA_PLATFORM=offscreen python -m app.gui.screenshot --out shots/
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

QUESTION = "Write a Python function that reverses a string, in a code block."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.gui.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="screenshots", help="folder for the PNGs")
    parser.add_argument("--model", default=None, help="model to use (default: the demo model)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MIXTRAL_DESK_HOME", tempfile.mkdtemp(prefix="mixtral-desk-shots-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core.models.demo import demo_model_path
    from app.core.storage.settings import Settings, save_settings
    from app.gui.main_window import MainWindow
    from app.gui.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    model = args.model or str(demo_model_path())

    def wait(signal: object, seconds: int) -> None:
        loop = QEventLoop()
        signal.connect(lambda *_: loop.quit())  # type: ignore[attr-defined]
        QTimer.singleShot(seconds * 1000, loop.quit)
        loop.exec()

    for theme in ("light", "dark"):
        save_settings(Settings(theme=theme))
        apply_theme(theme, 10)
        window = MainWindow(load_on_start=False)
        window.resize(1280, 800)
        window.show()
        window.load_model(model)
        wait(window.controller.model_loaded, 60)
        window.temperature.setValue(0.0)
        window.input.setPlainText(QUESTION)
        window.send()
        wait(window.controller.reply_finished, 120)
        app.processEvents()
        path = out / f"main-window-{theme}.png"
        window.grab().save(str(path))
        print(path)
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
