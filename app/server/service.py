"""One loaded model serving many HTTP requests: a single worker thread takes them in arrival order (fair
FIFO), or with ``parallel`` > 1 the batch decoder serves several at once; each request streams its text
through a ticket and is cancelled when its client goes away."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from app.core.batching import StreamTicket
from app.core.engine import Engine, Generation, GenerationRequest
from app.core.errors import EngineBusyError


@dataclass
class Ticket(StreamTicket):
    """A ticket for the one-at-a-time path, which also cancels the running :class:`Generation`."""

    generation: Generation | None = None

    def cancel(self) -> None:
        super().cancel()
        generation = self.generation
        if generation is not None:
            generation.cancel()


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
        self.recent: list[StreamTicket] = []  # the last 50 tickets, newest last (for status and tests)

    def submit(self, request: GenerationRequest) -> StreamTicket:
        ticket: StreamTicket
        if self.batch is not None:
            ticket = self.batch.submit(request)
        else:
            ticket = Ticket(request)
            self._queue.put(ticket)
        self.recent.append(ticket)
        del self.recent[:-50]
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
            error: BaseException | None = None
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
                error = err
            finally:
                ticket.close(error=error, stats=ticket.generation.stats if ticket.generation else None)
