"""Context policy: what to do when a conversation no longer fits the model's context window.

``rolling`` (the default) drops the oldest whole turns, never a system prompt nor the latest user
message, and reports what it dropped. ``stop`` refuses with a clear message. Neither ever cuts a
message in the middle: if the latest message alone does not fit, the user is told so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.core.errors import ContextOverflowError
from app.core.prompts import ChatFormat, Message, Vocabulary

POLICY_ROLLING = "rolling"
POLICY_STOP = "stop"
POLICIES: tuple[str, ...] = (POLICY_ROLLING, POLICY_STOP)


@dataclass(frozen=True)
class FittedPrompt:
    """The token ids to feed, and which messages were left out to make them fit."""

    tokens: tuple[int, ...]
    kept: tuple[Message, ...]
    dropped: tuple[Message, ...]
    budget: int

    @property
    def dropped_turns(self) -> int:
        return sum(1 for m in self.dropped if m.role == "user") or (1 if self.dropped else 0)

    def describe_dropped(self) -> str:
        """A user-facing sentence about what was left out, or an empty string."""
        if not self.dropped:
            return ""
        count = len(self.dropped)
        return (
            f"The conversation no longer fits the context window: the oldest {count} "
            f"message{'s' if count != 1 else ''} ({self.dropped_turns} turn{'s' if self.dropped_turns != 1 else ''}) "
            "were left out of the prompt."
        )


def split_turns(messages: Sequence[Message]) -> tuple[list[int], list[list[int]]]:
    """Indexes of system messages, and of the other messages grouped into turns that start at a user message."""
    pinned: list[int] = []
    turns: list[list[int]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            pinned.append(index)
        elif message.role == "user" or not turns:
            turns.append([index])
        else:
            turns[-1].append(index)
    return pinned, turns


def reply_reserve(n_ctx: int, max_new_tokens: int) -> int:
    """Tokens kept free for the reply: the requested maximum, but at most half the window."""
    wanted = max_new_tokens if max_new_tokens > 0 else 256
    return max(1, min(wanted, n_ctx // 2))


def fit_prompt(
    messages: Sequence[Message],
    chat_format: ChatFormat,
    vocab: Vocabulary,
    *,
    n_ctx: int,
    reserve: int,
    policy: str = POLICY_ROLLING,
) -> FittedPrompt:
    """Encode ``messages`` so that prompt + ``reserve`` reply tokens fit in ``n_ctx``.

    Raises:
        ContextOverflowError: the policy is ``stop`` and the conversation is too long, or even the
            system prompt plus the latest turn do not fit.
    """
    budget = n_ctx - reserve
    tokens = chat_format.encode(messages, vocab)
    if len(tokens) <= budget:
        return FittedPrompt(tuple(tokens), tuple(messages), (), budget)
    if policy != POLICY_ROLLING:
        raise ContextOverflowError(
            f"This conversation needs {len(tokens)} tokens, but only {budget} fit in the prompt "
            f"(context {n_ctx} minus {reserve} kept for the reply). Start a new conversation, raise the "
            "context size, or switch the context policy to rolling window.",
            needed=len(tokens),
            available=budget,
        )
    pinned, turns = split_turns(messages)
    for first_kept in range(1, len(turns)):
        kept_indexes = sorted(pinned + [i for turn in turns[first_kept:] for i in turn])
        kept = [messages[i] for i in kept_indexes]
        tokens = chat_format.encode(kept, vocab)
        if len(tokens) <= budget:
            dropped = tuple(messages[i] for i in range(len(messages)) if i not in set(kept_indexes))
            return FittedPrompt(tuple(tokens), tuple(kept), dropped, budget)
    raise ContextOverflowError(
        f"Your latest message needs {len(tokens)} tokens with the system prompt, but only {budget} fit "
        f"(context {n_ctx} minus {reserve} kept for the reply). Nothing was cut: shorten the message or "
        "the system prompt, lower the reply length, or raise the context size.",
        needed=len(tokens),
        available=budget,
    )
