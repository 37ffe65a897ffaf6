"""The one surface every chat engine offers: the local engine host and a remote OpenAI-compatible server.

The window's controller, the console chat and the API server hold a :class:`ChatEngine` and never ask which
kind it is.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import GenerationRequest, HostHealth, LoadSettings, ModelInfo


@runtime_checkable
class ChatEngine(Protocol):
    """Load a model (or connect to one), stream replies through tickets, report health."""

    info: ModelInfo | None

    @property
    def loaded(self) -> bool: ...

    def load_async(self, settings: LoadSettings) -> Future[ModelInfo]:
        """Start loading (connecting); the future holds the model's info or a typed error."""
        ...

    def load(self, settings: LoadSettings) -> ModelInfo: ...

    def cancel_load(self) -> None: ...

    def unload(self) -> None: ...

    def unload_async(self) -> Future[None]: ...

    def generate(self, request: GenerationRequest) -> ReplyTicket:
        """Queue a reply; text streams through the ticket, errors end it."""
        ...

    def health(self) -> HostHealth: ...

    def close(self) -> None: ...
