"""Screenshots for review: the main window (demo model, one reply with a code block), the model manager, the
settings dialog and, given a Mixtral-architecture model, the expert-routing panel; at 800×600 and 1600×1000
(the dialog at its own size and wider), light and dark.

    QT_QPA_PLATFORM=offscreen python -m app.gui.screenshot --out shots/ [--routing-model tiny.gguf] [--rpc HOST:PORT]

With ``--rpc`` the main window loads its model with that RPC worker and the model manager counts its memory.

``python -m quant tiny --out DIR`` writes a tiny Mixtral for the routing shots. Everything runs in a fresh,
temporary data folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

QUESTION = "Write a Python function that reverses a string, in a code block."
SIZES = ((800, 600), (1600, 1000))
THEMES = ("light", "dark")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.gui.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="screenshots", help="folder for the PNGs")
    parser.add_argument("--model", default=None, help="model for the main window (default: the demo model)")
    parser.add_argument("--routing-model", default=None, help="a Mixtral-architecture GGUF for the routing shots")
    parser.add_argument(
        "--only", choices=("main", "models", "settings", "routing"), action="append", help="just these shots"
    )
    parser.add_argument("--rpc", default="", metavar="HOST:PORT", help="an RPC worker for the main window and models")
    parser.add_argument(
        "--font-size", type=int, default=None, help="point size of the app's font (Settings offers 9-16; default 10)"
    )
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
    from app.gui.model_manager import ModelManagerWindow
    from app.gui.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    model = args.model or str(demo_model_path())
    only = set(args.only or ("main", "models", "settings", "routing"))
    workers = (args.rpc,) if args.rpc else ()
    written: list[Path] = []

    def wait(signal: Any, seconds: int) -> None:
        loop = QEventLoop()
        signal.connect(lambda *_: loop.quit())
        QTimer.singleShot(seconds * 1000, loop.quit)
        loop.exec()

    def settle(window: MainWindow) -> None:  # what the window handed to its disk thread is on screen
        window.disk.wait_until_idle()

    def save(widget: Any, name: str, width: int, height: int, theme: str) -> None:
        widget.resize(width, height)
        for _ in range(3):  # layouts settle over a few passes (word-wrapped labels, the splitter)
            app.processEvents()
        font = f"-font{args.font_size}" if args.font_size else ""
        path = out / f"{name}-{width}x{height}-{theme}{font}.png"
        widget.grab().save(str(path))
        written.append(path)
        print(path)

    def chat(window: MainWindow, text: str) -> None:
        settle(window)
        window.input.setPlainText(text)
        window.send_button.click()
        wait(window.controller.reply_finished, 120)

    for theme in THEMES:
        font_size = args.font_size or Settings().font_size
        save_settings(Settings(theme=theme, font_size=font_size, rpc_workers=workers))
        apply_theme(theme, font_size)
        if "settings" in only:
            from app.gui.settings_dialog import SettingsDialog

            dialog = SettingsDialog(Settings(rpc_workers=workers or ("192.168.1.20:50052",), cpu_moe=None))
            dialog.show()
            hint = dialog.sizeHint()
            for width in (hint.width(), max(hint.width(), 900)):
                save(dialog, "settings", width, hint.height(), theme)
            dialog.close()
        if "main" in only or "models" in only:
            window = MainWindow(load_on_start=False)
            window.show()
            window.load_model(model)
            wait(window.controller.model_loaded, 60)
            window.new_button.click()
            window.temperature.setValue(0.0)
            window.max_tokens.setValue(300)
            chat(window, QUESTION)
            if "main" in only:
                for width, height in SIZES:
                    window.resize(width, height)
                    window.toggle_conversations_action.setChecked(True)
                    window.toggle_settings_action.setChecked(width >= 1100)  # as a window of that width starts
                    save(window, "main", width, height, theme)
            if "models" in only:
                manager = ModelManagerWindow(window.downloads, rpc_workers=workers)
                manager.show()
                wait(manager.plans_updated, 60)
                for width, height in SIZES:
                    save(manager, "models", width, height, theme)
                manager.close()
            window.close()
        if "routing" in only and args.routing_model:
            window = MainWindow(load_on_start=False)
            window.show()
            window.load_model(args.routing_model)
            wait(window.controller.model_loaded, 60)
            window.new_button.click()
            settle(window)
            window.max_tokens.setValue(12)
            window.inspect_routing.setChecked(True)
            window.input.setPlainText("Which experts answer this?")
            window.send_button.click()
            wait(window.controller.routing_traced, 120)
            for width, height in SIZES:
                window.resize(width, height)
                window.toggle_conversations_action.setChecked(True)
                window.toggle_settings_action.setChecked(width >= 1100)
                save(window, "routing", width, height, theme)
            window.close()
        elif "routing" in only:
            print("routing: skipped (pass --routing-model; `python -m quant tiny --out DIR` writes a tiny Mixtral)")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
