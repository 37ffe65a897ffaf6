"""The GUI's owner of the engine: loads and generation run on one worker thread; widgets only get signals.

Streamed text is collected from the worker into a buffer and flushed to the view on a 40 ms timer (one
repaint per frame, not per token).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.engine import Engine, Generation, GenerationRequest, LoadSettings, ModelInfo

FLUSH_INTERVAL_MS = 40


class ChatController(QObject):
    """Loads models and streams replies off the GUI thread.

    Signals:
        model_loaded(ModelInfo), model_load_failed(Exception)
        text_streamed(str): new reply text since the last flush
        reply_finished(Generation): the reply is complete, stopped or cut; ``generation.stats`` is set
        reply_failed(Exception)
    """

    model_loaded = Signal(object)
    model_load_failed = Signal(object)
    model_load_cancelled = Signal()
    routing_traced = Signal(object)
    routing_failed = Signal(object)
    text_streamed = Signal(str)
    reply_finished = Signal(object)
    reply_failed = Signal(object)
    _worker_done = Signal(object, object, object)  # (kind, result, error), delivered on the GUI thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = Engine()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._buffer: list[str] = []
        self._buffer_lock = threading.Lock()
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_INTERVAL_MS)
        self._flush_timer.timeout.connect(self._flush)
        self._generation: Generation | None = None
        self._load_cancelled = False
        self._futures: list[Future[Any]] = []
        self._worker_done.connect(self._on_worker_done)
        self.info: ModelInfo | None = None

    @property
    def busy(self) -> bool:
        return self._generation is not None

    def load_model(self, settings: LoadSettings) -> None:
        """Load in the background; ``model_loaded``, ``model_load_failed`` or ``model_load_cancelled`` follows."""
        self._load_cancelled = False
        self._submit("load", lambda: self.engine.load(settings))

    def use_engine(self, engine: object) -> None:
        """Switch to another engine (a remote model, or a fresh local one) and connect it in the background;
        ``model_loaded`` or ``model_load_failed`` follows."""
        self.engine = engine  # type: ignore[assignment]
        self.info = None
        self._load_cancelled = False
        self._submit("load", engine.load)  # type: ignore[attr-defined]

    def cancel_load(self) -> None:
        """Give up on the load in progress: llama.cpp cannot be interrupted mid-load, so the model is freed as
        soon as it finishes loading and ``model_load_cancelled`` is emitted; the window is usable meanwhile."""
        self._load_cancelled = True

    def send(self, request: GenerationRequest) -> Generation:
        """Start a reply; text arrives through ``text_streamed``, then ``reply_finished``."""
        generation = self.engine.generate(request)
        self._generation = generation

        def run() -> Generation:
            for delta in generation:
                with self._buffer_lock:
                    self._buffer.append(delta)
            return generation

        self._flush_timer.start()
        self._submit("reply", run)
        return generation

    def trace_routing(self, tokens: list[int], prompt_length: int) -> None:
        """Trace which experts these tokens went to, in the background (``routing_traced`` follows)."""
        from app.core.routing import trace_routing

        self._submit("trace", lambda: trace_routing(self.engine, tokens, generate=0, prompt_length=prompt_length))

    def stop(self) -> None:
        """Stop the reply within one token; what was produced is kept."""
        if self._generation is not None:
            self._generation.cancel()

    def shutdown(self) -> None:
        """Stop work and wait for the worker (called when the window closes)."""
        self.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, kind: str, work: Any) -> None:
        def run() -> None:
            try:
                result = work()
            except BaseException as err:
                self._worker_done.emit(kind, None, err)
            else:
                self._worker_done.emit(kind, result, None)

        self._futures.append(self._executor.submit(run))

    def _flush(self) -> None:
        with self._buffer_lock:
            text = "".join(self._buffer)
            self._buffer.clear()
        if text:
            self.text_streamed.emit(text)

    def _on_worker_done(self, kind: str, result: Any, error: BaseException | None) -> None:
        if kind == "load":
            if self._load_cancelled:
                self._load_cancelled = False
                self.info = None
                if error is None:
                    self._submit("unload", self.engine.unload)  # cancelled is reported once it is freed
                else:
                    self.model_load_cancelled.emit()
            elif error is None:
                self.info = result
                self.model_loaded.emit(result)
            else:
                self.model_load_failed.emit(error)
            return
        if kind == "unload":
            self.model_load_cancelled.emit()
            return
        if kind == "trace":
            (self.routing_traced if error is None else self.routing_failed).emit(result if error is None else error)
            return
        self._flush()
        self._flush_timer.stop()
        self._generation = None
        if error is None:
            self.reply_finished.emit(result)
        else:
            self.reply_failed.emit(error)
