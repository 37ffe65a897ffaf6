"""The one token loop's per-sequence state: what a running reply has evaluated, its sampler, its text so far,
and the rules that end it (end of text, stop string, length, full context, cancel).

The engine host drives many of these in one llama.cpp batch per step; each owns a KV sequence id and a
sampler chain. Text goes out as UTF-8-safe deltas with stop strings held back until they are decided.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence

from app.core.context import FittedPrompt
from app.core.errors import PromptFormatError
from app.core.prompts import ToolCall
from app.core.runtime.native import NativeVocab, SamplerChain
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import (
    STOP_CANCELLED,
    STOP_CONTEXT_FULL,
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_STRING,
    STOP_TOOL_CALLS,
    GenerationStats,
    TokenLogprobs,
)


class TokenTextDecoder:
    """Turns token bytes into text deltas that never split a UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, piece: bytes) -> str:
        return str(self._decoder.decode(piece))

    def flush(self) -> str:
        """Whatever is left; an incomplete character at the very end becomes U+FFFD."""
        return str(self._decoder.decode(b"", final=True))


class StopStringFilter:
    """Holds back streamed text that might be the start of a stop string; cuts the text at a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what may be shown now and whether a stop string was reached."""
        if not self._stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class KVSequence:
    """One KV sequence id of the host's context and the tokens whose cells it holds (for prefix reuse)."""

    __slots__ = ("cached", "last_used", "reply", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        self.last_used = 0.0
        self.reply: RunningReply | None = None

    def common_prefix(self, tokens: Sequence[int]) -> int:
        return common_prefix_length(self.cached, tokens)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (slice comparisons: C speed for long prompts)."""
    if type(a) is not type(b):  # a list never equals a tuple: compare like with like
        b = tuple(b) if isinstance(a, tuple) else list(b)
    low, high = 0, min(len(a), len(b))
    if high and a[0] != b[0]:
        return 0
    if a[:high] == b[:high]:
        return high
    while low < high:  # the shared length is at least low (a[:low] == b[:low]) and at most high
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class RunningReply:
    """A reply being decoded on one :class:`KVSequence`."""

    __slots__ = (
        "admitted_at",
        "decoder",
        "first_token_at",
        "generated",
        "ignore_eos",
        "last_token",
        "max_new",
        "n_ctx",
        "n_reused",
        "pending",
        "prompt",
        "prompt_tokens",
        "sampler",
        "sequence",
        "stops",
        "strip_leading",
        "submitted_at",
        "ticket",
        "tool_bytes",
        "tool_marker",
        "tool_reader",
        "top_logprobs",
    )

    def __init__(
        self,
        ticket: ReplyTicket,
        sequence: KVSequence,
        sampler: SamplerChain,
        tokens: Sequence[int],
        n_reused: int,
        *,
        n_ctx: int,
        is_chat: bool,
        prompt: FittedPrompt | None,
        submitted_at: float,
        tool_marker: int = -1,
        tool_reader: Callable[[str], tuple[ToolCall, ...]] | None = None,
    ) -> None:
        sampling = ticket.request.sampling
        self.ticket = ticket
        self.sequence = sequence
        self.sampler = sampler
        self.prompt = prompt
        self.prompt_tokens = len(tokens)
        self.n_reused = n_reused
        self.pending = list(tokens[n_reused:])  # prompt tokens still to evaluate
        self.n_ctx = n_ctx
        self.max_new = sampling.max_new_tokens
        self.ignore_eos = sampling.ignore_eos
        self.top_logprobs = sampling.top_logprobs
        self.decoder = TokenTextDecoder()
        self.stops = StopStringFilter(sampling.stop)
        self.strip_leading = is_chat
        self.last_token = -1
        self.generated = 0
        self.submitted_at = submitted_at
        self.admitted_at = time.perf_counter()
        self.first_token_at = 0.0
        self.tool_marker = tool_marker  # the token that starts tool calls (-1: no tools offered)
        self.tool_reader = tool_reader
        self.tool_bytes: bytearray | None = None  # the calls' text once the marker came (not streamed)

    def accept(self, token: int, vocab: NativeVocab, logprobs: TokenLogprobs | None = None) -> str | None:
        """Take the sampled ``token`` (and its ``logprobs``, when asked for): stream its text; return a stop
        reason when the reply ends here."""
        ticket = self.ticket
        if not self.first_token_at:
            self.first_token_at = time.perf_counter()
        if ticket.cancelled:
            return STOP_CANCELLED
        if not self.ignore_eos and vocab.is_end_of_generation(token):
            return STOP_EOS
        self.generated += 1
        ticket.token_ids.append(token)
        if logprobs is not None:
            ticket.logprobs.append(logprobs)
        if self.tool_bytes is not None:  # writing tool calls: kept apart from the streamed text, no stop strings
            self.tool_bytes += vocab.token_bytes(token)
        elif token == self.tool_marker:
            self._push(self.stops.flush() + self.decoder.flush())  # the text before the calls is all there is
            self.tool_bytes = bytearray()
        else:
            text, stopped = self.stops.push(self.decoder.decode(vocab.token_bytes(token)))
            self._push(text)
            if stopped:
                return STOP_STRING
        if self.max_new and self.generated >= self.max_new:
            return STOP_MAX_TOKENS
        if len(self.sequence.cached) >= self.n_ctx:
            return STOP_CONTEXT_FULL
        self.last_token = token
        return None

    def _push(self, text: str) -> None:
        if self.strip_leading and text:
            text = text.lstrip()
            self.strip_leading = not text
        if text:
            self.ticket.push(text, coalesce=True)

    def finish_text(self, reason: str) -> str:
        """Release text held back for a possible stop string or a split character (not after a stop/cancel),
        read the tool calls the reply wrote, and return the reason it ended (``tool_calls`` when it called)."""
        ticket = self.ticket
        if self.tool_bytes is not None:
            ticket.tool_text = self.tool_bytes.decode("utf-8", errors="replace").strip()
            if reason == STOP_EOS and self.tool_reader is not None:
                try:
                    ticket.tool_calls = self.tool_reader(ticket.tool_text)
                except PromptFormatError:
                    return reason  # not calls after all: the text stays in ticket.tool_text
                return STOP_TOOL_CALLS
            return reason
        if reason in (STOP_STRING, STOP_CANCELLED):
            return reason
        tail = self.stops.flush() + self.decoder.flush()
        if self.strip_leading:
            tail = tail.lstrip()
        if tail:
            ticket.push(tail)
        return reason

    def stats(self, reason: str) -> GenerationStats:
        submitted_at = self.submitted_at
        end = time.perf_counter()
        first = self.first_token_at or end
        prefill = first - self.admitted_at
        evaluated = self.prompt_tokens - self.n_reused - len(self.pending)  # less when cancelled mid-prompt
        decode = end - self.first_token_at if self.first_token_at else 0.0
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            prompt_tokens_cached=self.n_reused,
            prompt_tokens_evaluated=evaluated,
            generated_tokens=self.generated,
            time_to_first_token_s=round(first - submitted_at, 4),
            prompt_tokens_per_s=round(evaluated / prefill, 2) if prefill > 0 else 0.0,
            generation_tokens_per_s=round((self.generated - 1) / decode, 2)
            if decode > 0 and self.generated > 1
            else 0.0,
            total_time_s=round(end - submitted_at, 4),
            stop_reason=reason,
            context_used=len(self.sequence.cached),
            context_size=self.n_ctx,
            dropped_messages=len(self.prompt.dropped) if self.prompt is not None else 0,
            queued_s=round(self.admitted_at - submitted_at, 4),
        )
