"""What the API serves: a chat engine (the local engine host, or a remote one) under the name clients use.

The engine host decodes every request in one batch per step (continuous batching), so requests from several
clients, and the window's own chat, make progress together; a request's ticket is cancelled when its client
goes away.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from app.core.runtime.host import EngineHost
from app.core.runtime.protocol import ChatEngine
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, HostHealth


@dataclass
class ServedModel:
    """``engine`` served as ``model_id``; keeps the last 50 tickets (newest last) for status and tests."""

    engine: ChatEngine
    model_id: str
    recent: list[ReplyTicket] = field(default_factory=list)

    def submit(self, request: GenerationRequest, n: int = 1) -> list[ReplyTicket]:
        """``n`` replies to ``request``; the local host evaluates their shared prompt once."""
        host = self.host()
        if host is not None:
            tickets = host.generate_choices(request, n)
        else:
            seed = request.sampling.seed
            tickets = [
                self.engine.generate(
                    replace(request, sampling=replace(request.sampling, seed=None if seed is None else seed + i))
                )
                for i in range(n)
            ]
        self.recent.extend(tickets)
        del self.recent[:-50]
        return tickets

    def health(self) -> HostHealth:
        return self.engine.health()

    def host(self) -> EngineHost | None:
        """The local engine host, when the model runs here (None for a remote engine)."""
        return self.engine if isinstance(self.engine, EngineHost) else None
