"""The window's client of the chat engine: loads, replies and routing traces are jobs on the engine (the local
engine host, or a remote engine); widgets only get signals.

Nothing here blocks the GUI thread: the engine's own thread reports back through futures and ticket
listeners, which only queue a signal. Streamed text is collected into a buffer and flushed to the view on a
40 ms timer (one repaint per frame, not per token).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.runtime.host import EngineHost
from app.core.runtime.protocol import ChatEngine
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, LoadSettings, ModelInfo

FLUSH_INTERVAL_MS = 40


class ChatController(QObject):
    """Loads models and streams replies without blocking the GUI thread.

    Signals:
        model_loaded(ModelInfo), model_load_failed(Exception), model_load_cancelled()
        prompt_progressed(int, int): before the first token, prompt tokens evaluated (or reused) of the total
        text_streamed(str): new reply text since the last flush
        reply_finished(ReplyTicket): the reply is complete, stopped or cut; ``ticket.stats`` is set
        reply_failed(Exception)
        routing_traced(RoutingTrace), routing_failed(Exception)
    """

    model_loaded = Signal(object)
    model_load_failed = Signal(object)
    model_load_cancelled = Signal()
    routing_traced = Signal(object)
    routing_failed = Signal(object)
    prompt_progressed = Signal(int, int)
    text_streamed = Signal(str)
    reply_finished = Signal(object)
    reply_failed = Signal(object)
    _worker_done = Signal(object, object, object)  # (kind, result, error), delivered on the GUI thread

    def __init__(self, parent: QObject | None = None, engine: ChatEngine | None = None) -> None:
        super().__init__(parent)
        self.engine: ChatEngine = engine or EngineHost()
        self._buffer: list[str] = []
        self._buffer_lock = threading.Lock()
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_INTERVAL_MS)
        self._flush_timer.timeout.connect(self._flush)
        self._ticket: ReplyTicket | None = None
        self._progress: tuple[int, int] | None = None  # last reported prompt progress; None once text streams
        self._load_cancelled = False
        self._worker_done.connect(self._on_worker_done)
        self.info: ModelInfo | None = None

    @property
    def busy(self) -> bool:
        return self._ticket is not None

    @property
    def host(self) -> EngineHost | None:
        """The local engine host, when the window chats with a local model."""
        return self.engine if isinstance(self.engine, EngineHost) else None

    def load_model(self, settings: LoadSettings) -> None:
        """Load in the background; ``model_loaded``, ``model_load_failed`` or ``model_load_cancelled`` follows."""
        if self.host is None:
            self.use_engine(EngineHost(), settings)
            return
        self._load_cancelled = False
        self._report("load", self.engine.load_async(settings))

    def use_engine(self, engine: ChatEngine, settings: LoadSettings | None = None) -> None:
        """Switch to another engine (a remote model, or the local host again) and load or connect in the
        background; ``model_loaded`` or ``model_load_failed`` follows."""
        previous, self.engine = self.engine, engine
        if previous is not engine:
            previous.close()
        self.info = None
        self._load_cancelled = False
        self._report("load", engine.load_async(settings))  # type: ignore[arg-type]

    def cancel_load(self) -> None:
        """Give up on the load in progress: llama.cpp stops at its next progress report, and
        ``model_load_cancelled`` is emitted; the window is usable meanwhile."""
        self._load_cancelled = True
        self.engine.cancel_load()

    def send(self, request: GenerationRequest) -> ReplyTicket:
        """Start a reply; text arrives through ``text_streamed``, then ``reply_finished`` or ``reply_failed``."""
        ticket = self.engine.generate(request)
        self._ticket = ticket
        self._progress = (0, 0)
        done = threading.Event()

        def on_event() -> None:  # on the engine's thread: move text into the buffer, report the end once
            while True:
                try:
                    delta = ticket.next_delta(0)
                except queue.Empty:
                    return
                if delta is None:
                    if not done.is_set():
                        done.set()
                        self._worker_done.emit("reply", ticket, ticket.error)
                    return
                with self._buffer_lock:
                    self._buffer.append(delta)

        self._flush_timer.start()
        ticket.set_listener(on_event)
        return ticket

    def trace_routing(self, tokens: list[int], prompt_length: int) -> None:
        """Trace which experts these tokens went to, in the background (``routing_traced`` follows)."""
        from app.core.runtime.routing import trace_routing_async

        host = self.host
        if host is None:
            return
        self._report("trace", trace_routing_async(host, tokens, generate=0, prompt_length=prompt_length))

    def stop(self) -> None:
        """Stop the reply within one token; what was produced is kept."""
        if self._ticket is not None:
            self._ticket.cancel()

    def shutdown(self) -> None:
        """Stop work and free the model (called when the window closes)."""
        self.stop()
        self.engine.close()

    def _report(self, kind: str, future: Future[Any]) -> None:
        def done(finished: Future[Any]) -> None:  # on the engine's thread
            error = finished.exception()
            self._worker_done.emit(kind, None if error else finished.result(), error)

        future.add_done_callback(done)

    def _flush(self) -> None:
        with self._buffer_lock:
            text = "".join(self._buffer)
            self._buffer.clear()
        if text:
            self._progress = None
            self.text_streamed.emit(text)
            return
        ticket = self._ticket
        if ticket is not None and self._progress is not None:
            progress = (ticket.prompt_done, ticket.prompt_total)
            if progress != self._progress:
                self._progress = progress
                self.prompt_progressed.emit(*progress)

    def _on_worker_done(self, kind: str, result: Any, error: BaseException | None) -> None:
        if kind == "load":
            from app.core.runtime.loading import LoadCancelled

            if self._load_cancelled or isinstance(error, LoadCancelled):
                self._load_cancelled = False
                self.info = None
                if error is None:
                    self.engine.unload_async()  # finished before it heard the cancel
                self.model_load_cancelled.emit()
            elif error is None:
                self.info = result
                self.model_loaded.emit(result)
            else:
                self.model_load_failed.emit(error)
            return
        if kind == "trace":
            (self.routing_traced if error is None else self.routing_failed).emit(result if error is None else error)
            return
        self._flush()
        self._flush_timer.stop()
        self._ticket = None
        if error is None:
            self.reply_finished.emit(result)
        else:
            self.reply_failed.emit(error)
