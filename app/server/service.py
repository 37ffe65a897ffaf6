"""One loaded model serving many HTTP requests: a single worker thread takes them in arrival order (fair
FIFO); each request streams its text through a queue and can be cancelled when its client goes away."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from app.core.engine import Engine, Generation, GenerationRequest
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
    """Owns the engine for the server; requests run one at a time on one thread, in arrival order."""

    def __init__(self, engine: Engine, model_id: str) -> None:
        self.engine = engine
        self.model_id = model_id
        self._queue: queue.Queue[Ticket | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="server-engine", daemon=True)
        self._thread.start()
        self.recent: list[Ticket] = []  # the last 50 tickets, newest last (for status and tests)

    def submit(self, request: GenerationRequest) -> Ticket:
        ticket = Ticket(request)
        self.recent.append(ticket)
        del self.recent[:-50]
        self._queue.put(ticket)
        return ticket

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

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
