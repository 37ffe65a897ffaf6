"""The window's own load and send path, timed: load the model through the window, click Send, and report
load seconds, time to first token, decode speed and peak RSS as JSON (one line on stdout).

    QT_QPA_PLATFORM=offscreen python -m app.gui.load_timing --model PATH [--tokens N]

``python -m quant realsize-bench`` runs it for the full-size 8x7B file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMPT = "Write a short poem about the sea."


def time_window_path(path: Path, tokens: int) -> dict[str, Any]:
    """The window's own load and send path (offscreen), timed from the signals it emits."""
    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow

    application = QApplication.instance() or QApplication([])
    window = MainWindow(load_on_start=False)
    window.max_tokens.setValue(tokens)
    window.temperature.setValue(0.0)
    outcome: dict[str, Any] = {}

    def wait_for(signal: Any, failed: Any, start: Any) -> Any:
        loop = QEventLoop()

        def settle(key: str, value: object) -> None:
            outcome[key] = value
            loop.quit()

        signal.connect(lambda result: settle("result", result))
        failed.connect(lambda error: settle("error", error))
        QTimer.singleShot(0, start)
        loop.exec()
        if "error" in outcome:
            raise RuntimeError(f"the window failed: {outcome['error']}")
        return outcome.pop("result")

    controller = window.controller
    started = time.perf_counter()
    wait_for(controller.model_loaded, controller.model_load_failed, lambda: window.load_model(str(path)))
    load_s = time.perf_counter() - started
    window.input.setPlainText(PROMPT)
    ticket = wait_for(
        controller.reply_finished,
        controller.reply_failed,
        lambda: QTest.mouseClick(window.send_button, Qt.MouseButton.LeftButton),
    )
    stats = ticket.stats
    window.close()
    application.processEvents()
    return {
        "load_s": load_s,
        "ttft_s": stats.time_to_first_token_s,
        "tokens_per_s": stats.generation_tokens_per_s,
        "generated": stats.generated_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.gui.load_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="the GGUF to load")
    parser.add_argument("--tokens", type=int, default=32, help="tokens to generate (default 32)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MIXTRAL_DESK_HOME", tempfile.mkdtemp(prefix="mixtral-desk-load-timing-"))
    print(json.dumps(time_window_path(args.model, args.tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
