"""One loaded model serving many HTTP requests: a single worker thread takes them in arrival order (fair
FIFO); each request streams its text through a queue and can be cancelled when its client goes away."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from app.core.engine import Engine, Generation, GenerationRequest, GenerationStats
from app.core.errors import EngineBusyError

_DONE = object()


@dataclass
class Ticket:
    """A queued or running request: text deltas arrive on ``deltas``; ``generation`` holds stats at the end."""

    request: GenerationRequest
    deltas: queue.Queue[object] = field(default_factory=queue.Queue)
    generation: Generation | None = None
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def stats(self) -> GenerationStats | None:
        return self.generation.stats if self.generation is not None else None

    def cancel(self) -> None:
        """Stop the request (queued: it never starts; running: within one token)."""
        self.cancelled.set()
        generation = self.generation
        if generation is not None:
            generation.cancel()

    def next_delta(self, timeout: float | None = None) -> str | None:
        """The next piece of text, or None at the end (then check ``error`` and ``generation.stats``)."""
        item = self.deltas.get(timeout=timeout)
        return None if item is _DONE else str(item)


class EngineService:
    """Owns the engine for the server. With ``parallel`` 1, requests run one at a time in arrival order; with
    more, up to ``parallel`` requests are decoded together in one llama.cpp batch per step."""

    def __init__(self, engine: Engine, model_id: str, parallel: int = 1) -> None:
        self.engine = engine
        self.model_id = model_id
        self.batch: Any = None
        if parallel > 1:
            from app.core.batching import BatchDecoder

            self.batch = BatchDecoder(engine, parallel)
        self._queue: queue.Queue[Ticket | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="server-engine", daemon=True)
        self._thread.start()
        self.recent: list[Ticket] = []  # the last 50 tickets, newest last (for status and tests)

    def submit(self, request: GenerationRequest) -> Any:
        if self.batch is not None:
            batch_ticket = self.batch.submit(request)
            self.recent.append(batch_ticket)
            del self.recent[:-50]
            return batch_ticket
        ticket = Ticket(request)
        self.recent.append(ticket)
        del self.recent[:-50]
        self._queue.put(ticket)
        return ticket

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        if self.batch is not None:
            self.batch.close()

    def _work(self) -> None:
        while True:
            ticket = self._queue.get()
            if ticket is None:
                return
            try:
                while not ticket.cancelled.is_set():
                    generation = self.engine.generate(ticket.request)
                    ticket.generation = generation
                    try:
                        for delta in generation:
                            ticket.deltas.put(delta)
                    except EngineBusyError:  # the desktop chat is answering: wait for it, then go
                        ticket.generation = None
                        ticket.cancelled.wait(0.2)
                        continue
                    break
            except BaseException as err:
                ticket.error = err
            finally:
                ticket.deltas.put(_DONE)
                ticket.finished.set()
