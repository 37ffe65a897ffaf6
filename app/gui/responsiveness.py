"""GUI responsiveness while a reply streams at full speed: a 10 ms timer on the GUI thread records how late
each tick fires; the worst delay must stay under 50 ms.

    QT_QPA_PLATFORM=offscreen python -m app.gui.responsiveness [--model PATH] [--tokens N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

TICK_MS = 10
TARGET_MS = 50.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.gui.responsiveness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model to stream from (default: the demo model)")
    parser.add_argument("--tokens", type=int, default=400, help="reply length in tokens (default 400)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MIXTRAL_DESK_HOME", tempfile.mkdtemp(prefix="mixtral-desk-lag-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core.models.demo import demo_model_path
    from app.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow(load_on_start=False)
    window.resize(1200, 800)
    window.show()
    loop = QEventLoop()
    window.controller.model_loaded.connect(lambda *_: loop.quit())
    window.load_model(args.model or str(demo_model_path()))
    loop.exec()
    window.max_tokens.setValue(args.tokens)
    window.temperature.setValue(0.8)

    lags: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        lags.append(max(0.0, (now - last[0]) * 1000 - TICK_MS))
        last[0] = now

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    finished = QEventLoop()
    window.controller.reply_finished.connect(lambda generation: (finished.quit(), results.append(generation)))
    results: list[object] = []
    window.input.setPlainText("Tell me a long story about a lighthouse keeper and a storm.")
    last[0] = time.perf_counter()
    timer.start()
    window.send()
    finished.exec()
    timer.stop()
    generation = results[0]
    stats = generation.stats  # type: ignore[attr-defined]
    print(f"reply: {stats.generated_tokens} tokens at {stats.generation_tokens_per_s:.1f} tok/s")
    print(
        f"GUI timer ticks: {len(lags)}; lag median {statistics.median(lags):.1f} ms, "
        f"p99 {sorted(lags)[int(len(lags) * 0.99) - 1]:.1f} ms, worst {max(lags):.1f} ms (target < {TARGET_MS:.0f} ms)"
    )
    window.close()
    app.processEvents()
    return 0 if max(lags) < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
