"""KV cells of prompts no sequence holds any more, kept in RAM so that a returning conversation or client
does not evaluate its prompt again.

The engine host has one KV sequence per parallel reply. When a request needs a sequence that holds another
conversation, that conversation's cells would be lost; the host first copies them here (llama.cpp's
per-sequence state), and when a later request continues a saved prompt further than any sequence does, its
cells are copied back instead of evaluated. Switching between two chats in the window, or nine API clients
taking turns on four sequences, then costs a memory copy, not a prompt evaluation (minutes for a long Mixtral
conversation on a CPU). llama-server does the same with its ``--cache-ram``.

Entries are kept least recently used first, within a byte budget; this module holds bytes only, never a
llama.cpp object.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from app.core.runtime.decoding import common_prefix_length

# the most RAM the cache takes when nothing says otherwise, and the share of the RAM left over after the model
AUTO_BUDGET_MAX_BYTES = 4 << 30
AUTO_BUDGET_SHARE = 4
# prompts shorter than this are cheap to evaluate again: not worth a copy
MIN_SAVED_TOKENS = 32
# every admission compares its prompt with each saved one: a bound keeps that well under a millisecond
MAX_SAVED_PROMPTS = 64


def auto_budget(available_bytes: int, model_bytes_in_ram: int) -> int:
    """The cache's budget when the user chose none: a quarter of the RAM that is free beyond the model's
    weights (mapped weights count as available to the kernel, but evicting them would be ruinous), at most
    4 GiB."""
    spare = max(0, available_bytes - model_bytes_in_ram)
    return min(AUTO_BUDGET_MAX_BYTES, spare // AUTO_BUDGET_SHARE)


@dataclass(frozen=True)
class SavedPrompt:
    """A sequence's tokens and llama.cpp's state of their KV cells."""

    tokens: tuple[int, ...]
    state: bytearray


class PromptCache:
    """Saved prompts within ``budget_bytes`` of RAM (and at most :data:`MAX_SAVED_PROMPTS`), least recently
    used evicted first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], SavedPrompt] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def wants(self, tokens: Sequence[int]) -> bool:
        """Whether saving ``tokens`` would keep anything new (long enough, fits the budget, not already held
        as the start of a saved prompt)."""
        if len(tokens) < MIN_SAVED_TOKENS or self.budget_bytes <= 0:
            return False
        key = tuple(tokens)
        for saved in self._entries:
            if len(saved) >= len(key) and saved[: len(key)] == key:
                self._entries.move_to_end(saved)
                return False
        return True

    def put(self, tokens: Sequence[int], state: bytearray) -> bool:
        """Keep ``state`` for ``tokens``; saved prompts that ``tokens`` continue are dropped (this one holds
        them). False when it is larger than the whole budget."""
        if not state or len(state) > self.budget_bytes:
            return False
        key = tuple(tokens)
        for saved in [s for s in self._entries if len(s) <= len(key) and key[: len(s)] == s]:
            self._drop(saved)
        self._entries[key] = SavedPrompt(key, state)
        self._bytes += len(state)
        while self._bytes > self.budget_bytes or len(self._entries) > MAX_SAVED_PROMPTS:
            self._drop(next(iter(self._entries)))
        return True

    def best(self, tokens: Sequence[int]) -> tuple[SavedPrompt, int] | None:
        """The saved prompt sharing the longest prefix with ``tokens`` and that length (None when none shares
        any); it becomes the most recently used."""
        best: SavedPrompt | None = None
        best_length = 0
        wanted = tuple(tokens)
        for saved in self._entries.values():
            length = common_prefix_length(saved.tokens, wanted)
            if length > best_length:
                best, best_length = saved, length
        if best is None:
            return None
        self._entries.move_to_end(best.tokens)
        return best, best_length

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= len(self._entries.pop(key).state)


def worth_restoring(gained_tokens: int, saved_tokens: int) -> bool:
    """Whether copying a saved prompt of ``saved_tokens`` back beats evaluating ``gained_tokens`` more than
    the sequence already reuses: a copy moves every saved cell, so it must gain a fair share of them."""
    return gained_tokens >= max(4, saved_tokens // 16)
