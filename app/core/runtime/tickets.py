"""A ticket for one reply: the producer (the engine host's decode loop, or a remote engine's worker) pushes
text into it; any consumer thread iterates it, waits on it or cancels it.

    ticket = engine.generate(request)
    for delta in ticket:        # blocks until text arrives; ends when the reply ends
        print(delta, end="")
    ticket.stats                # GenerationStats; ticket.error is raised at the end of iteration
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from app.core.context import FittedPrompt
from app.core.runtime.types import GenerationRequest, GenerationStats

_END = object()

Listener = Callable[[], None]


class ReplyTicket:
    """One streamed reply. ``text``, ``token_ids`` and ``prompt`` fill in as it runs; ``stats`` or ``error``
    are set when it ends. Iteration raises ``error`` (a typed exception) after the last delta.
    """

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.prompt: FittedPrompt | None = None
        self.stats: GenerationStats | None = None
        self.error: BaseException | None = None
        self.text = ""
        self.token_ids: list[int] = []
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self._deltas: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._listener: Listener | None = None

    # -- consumer side ---------------------------------------------------------------------------

    @property
    def tokens_generated(self) -> int:
        return len(self.token_ids)

    def cancel(self) -> None:
        """Stop the reply within one token (a queued request never starts). Safe from any thread."""
        self.cancelled.set()

    def set_listener(self, listener: Listener | None) -> None:
        """Call ``listener()`` (on the producer's thread, so keep it cheap) whenever text arrives or the
        reply ends; it should then drain :meth:`next_delta` with ``timeout=0``."""
        self._listener = listener
        if listener is not None and (self.finished.is_set() or not self._deltas.empty()):
            listener()

    def next_delta(self, timeout: float | None = None) -> str | None:
        """The next piece of text; None at the end (then see ``error`` and ``stats``).

        Raises:
            queue.Empty: nothing arrived within ``timeout``.
        """
        item = self._deltas.get(timeout=timeout) if timeout != 0 else self._deltas.get_nowait()
        if item is _END:
            self._deltas.put(_END)  # later calls see the end too
            return None
        return str(item)

    def __iter__(self) -> Iterator[str]:
        while (delta := self.next_delta()) is not None:
            yield delta
        if self.error is not None:
            raise self.error

    def run_to_end(self) -> str:
        """Consume the whole stream and return the reply text (raises the ticket's error, if any)."""
        for _ in self:
            pass
        return self.text

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the reply has ended; False on timeout."""
        return self.finished.wait(timeout)

    # -- producer side ---------------------------------------------------------------------------

    def push(self, text: str) -> None:
        """Add streamed text (producer only)."""
        self.text += text
        self._deltas.put(text)
        listener = self._listener
        if listener is not None:
            listener()

    def finish(self, *, stats: GenerationStats | None = None, error: BaseException | None = None) -> None:
        """Mark the end (producer only); idempotent."""
        if self.finished.is_set():
            return
        self.stats, self.error = stats, error
        self.finished.set()
        self._deltas.put(_END)
        listener = self._listener
        if listener is not None:
            listener()
