"""Typed exceptions raised by core. Their messages are written to be shown to the user as they are."""

from __future__ import annotations


class DeskError(Exception):
    """Base of every error core raises on purpose; `str(err)` is a complete, user-facing sentence."""


class ModelLoadError(DeskError):
    """A model file could not be loaded.

    Attributes:
        path: the file that was being loaded.
        reason: a short machine-readable cause: ``missing``, ``not_gguf``, ``truncated``,
            ``unsupported_arch``, ``outdated_layout``, ``out_of_memory`` or ``failed``.
        detail: llama.cpp's own last error line, when there was one.
    """

    def __init__(self, message: str, *, path: str, reason: str, detail: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.detail = detail


class ContextOverflowError(DeskError):
    """The prompt does not fit in the model's context window under the chosen policy."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class PromptFormatError(DeskError):
    """A conversation cannot be expressed in the chosen prompt format."""


class EngineBusyError(DeskError):
    """A second request reached the engine while one was running."""


class NoModelError(DeskError):
    """No model is loaded, or none could be found to load."""


NOT_UNICODE = (
    "The text is not valid Unicode (for example a lone surrogate from a broken emoji); remove it and send again."
)
