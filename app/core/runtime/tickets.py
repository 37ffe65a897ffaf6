"""A ticket for one reply: the producer (the engine host's decode loop, or a remote engine's worker) pushes
text into it; any consumer thread iterates it, waits on it or cancels it.

    ticket = engine.generate(request)
    for delta in ticket:        # blocks until text arrives; ends when the reply ends
        print(delta, end="")
    ticket.stats                # GenerationStats; ticket.error is raised at the end of iteration

A fast producer (the host's decode loop) coalesces wake-ups: it pushes with ``coalesce=True`` so only a reply's
first text wakes its consumer at once, and then flushes all its tickets together every few milliseconds. On a
machine whose cores all run llama.cpp, waking a consumer for every one of 2 000 tokens a second costs the decode
about 15 %; one wake-up per round costs nothing measurable, and a consumer of many tickets (the API server's
event loop) wakes once per round, not once per ticket.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

from app.core.context import FittedPrompt
from app.core.prompts import ToolCall
from app.core.runtime.types import GenerationRequest, GenerationStats, TokenLogprobs

Listener = Callable[[], None]


class ReplyTicket:
    """One streamed reply. ``text``, ``token_ids`` and ``prompt`` fill in as it runs; ``stats`` or ``error``
    are set when it ends. Iteration raises ``error`` (a typed exception) after the last delta.

    A reply offered tools may end by calling them: what it wrote after the format's tool-call token is not
    streamed but kept in ``tool_text``, and read into ``tool_calls`` when the reply ends (then its stop reason
    is ``tool_calls``; a reply cut short keeps only ``tool_text``).
    """

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.prompt: FittedPrompt | None = None
        self.stats: GenerationStats | None = None
        self.error: BaseException | None = None
        self.text = ""
        self.token_ids: list[int] = []
        #: with ``sampling.top_logprobs`` >= 0: one entry per generated token (as ``token_ids``)
        self.logprobs: list[TokenLogprobs] = []
        self.tool_text = ""
        self.tool_calls: tuple[ToolCall, ...] = ()
        #: prompt tokens to evaluate (0 until the reply starts) and those evaluated or reused from the cache so far;
        #: written by the producer, read by anyone (progress before the first token)
        self.prompt_total = 0
        self.prompt_done = 0
        self.cancelled = False  # set by cancel(); the producer checks it before every token
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._chunks: list[str] = []  # text not yet taken by the consumer
        self._ended = False
        self._ready = threading.Event()  # set when the consumer should look again
        self._listener: Listener | None = None
        self._woken = False  # the consumer has been woken at least once
        self._held = False  # text arrived since the last wake-up (coalescing producer)

    # -- consumer side ---------------------------------------------------------------------------

    @property
    def tokens_generated(self) -> int:
        return len(self.token_ids)

    def cancel(self) -> None:
        """Stop the reply within one token (a queued request never starts). Safe from any thread."""
        self.cancelled = True

    def set_listener(self, listener: Listener | None) -> None:
        """Call ``listener()`` (on the producer's thread, so keep it cheap) whenever text arrives or the
        reply ends; it should then drain :meth:`next_delta` with ``timeout=0``."""
        self._listener = listener
        if listener is not None:
            with self._lock:
                pending = self._ended or bool(self._chunks)
            if pending:
                listener()

    def next_delta(self, timeout: float | None = None) -> str | None:
        """All text that arrived since the last call (waiting for some); None at the end (then see ``error``
        and ``stats``).

        Raises:
            queue.Empty: nothing arrived within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._chunks:
                    text = self._chunks[0] if len(self._chunks) == 1 else "".join(self._chunks)
                    self._chunks.clear()
                    return text
                if self._ended:
                    return None
                self._ready.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not self._ready.wait(left):
                raise queue.Empty

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

    def push(self, text: str, *, coalesce: bool = False) -> None:
        """Add streamed text (producer only). With ``coalesce`` only the first text wakes the consumer at once;
        later text waits for :meth:`flush` or :meth:`finish`."""
        self.text += text
        with self._lock:
            self._chunks.append(text)
        if coalesce and self._woken:
            self._held = True
            return
        self._wake()

    def flush(self) -> None:
        """Wake the consumer for text held back by coalescing (producer only)."""
        if self._held:
            self._wake()

    def finish(self, *, stats: GenerationStats | None = None, error: BaseException | None = None) -> None:
        """Mark the end (producer only); idempotent."""
        if self.finished.is_set():
            return
        self.stats, self.error = stats, error
        with self._lock:
            self._ended = True
        self.finished.set()
        self._wake()

    def _wake(self) -> None:
        self._held = False
        self._woken = True
        self._ready.set()
        listener = self._listener
        if listener is not None:
            listener()
