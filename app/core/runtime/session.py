"""A running conversation with the loaded model: history, system prompt, send, reset.

Used by the console chat; the desktop chat keeps its history in the store but follows the same rules.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.core.context import POLICY_ROLLING
from app.core.prompts import Message
from app.core.runtime.protocol import ChatEngine
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, SamplingSettings


class ChatSession:
    """History plus settings; each :meth:`stream` call answers one user message and records the reply."""

    def __init__(
        self,
        engine: ChatEngine,
        *,
        system: str | None = None,
        sampling: SamplingSettings | None = None,
        context_policy: str = POLICY_ROLLING,
    ) -> None:
        self.engine = engine
        self.system = system or None
        self.sampling = sampling or SamplingSettings()
        self.context_policy = context_policy
        self.history: list[Message] = []
        self.last: ReplyTicket | None = None

    def messages(self) -> tuple[Message, ...]:
        """The full conversation as the model will see it (before any context policy)."""
        lead = (Message("system", self.system),) if self.system else ()
        return lead + tuple(self.history)

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()
        self.last = None

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt; ``None`` or empty removes it."""
        self.system = text or None

    def stream(self, user_text: str) -> Iterator[str]:
        """Send ``user_text`` and yield the reply as it streams.

        The reply, also a partial one after a cancel, joins the history when the stream ends.
        """
        self.history.append(Message("user", user_text))
        generation = self.engine.generate(GenerationRequest(self.messages(), self.sampling, self.context_policy))
        self.last = generation
        try:
            yield from generation
        except BaseException:
            if not generation.text:
                self.history.pop()
            raise
        finally:
            if not generation.finished.is_set():
                generation.cancel()  # the reader stopped early: do not generate for nobody
            if generation.text:
                self.history.append(Message("assistant", generation.text))

    def cancel(self) -> None:
        """Stop the reply being streamed, within one token."""
        if self.last is not None:
            self.last.cancel()
