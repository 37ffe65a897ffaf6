"""Serving several requests at once from one loaded model: every step, one llama.cpp batch carries the next
token of every active request (several sequence ids per decode), each request with its own sampler.

Used by the API server with ``--parallel N``. It runs on a second llama.cpp context over the engine's
weights (``N`` sequences of ``n_ctx`` tokens each), so the desktop chat's context is never disturbed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from app.core.context import fit_prompt, reply_reserve
from app.core.engine import (
    STOP_CANCELLED,
    STOP_CONTEXT_FULL,
    STOP_EOS,
    STOP_MAX_TOKENS,
    STOP_STRING,
    Engine,
    GenerationRequest,
    GenerationStats,
    StopStringFilter,
    TokenTextDecoder,
)
from app.core.errors import DeskError, NoModelError
from app.core.prompts import get_format

_DONE = object()


@dataclass
class StreamTicket:
    """A request handed to a worker thread: text arrives on ``deltas``; ``stats`` and ``error`` are set at the
    end, then ``finished``. Any thread may :meth:`cancel` it."""

    request: GenerationRequest
    deltas: queue.Queue[object] = field(default_factory=queue.Queue)
    stats: GenerationStats | None = None
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop the request (queued: it never starts; running: within one token)."""
        self.cancelled.set()

    def next_delta(self, timeout: float | None = None) -> str | None:
        """The next piece of text, or None at the end (then look at ``error`` and ``stats``)."""
        item = self.deltas.get(timeout=timeout)
        return None if item is _DONE else str(item)

    def close(self, *, error: BaseException | None = None, stats: GenerationStats | None = None) -> None:
        """Mark the end: no more text; ``error`` or ``stats`` tell how it went."""
        self.error, self.stats = error, stats
        self.deltas.put(_DONE)
        self.finished.set()


@dataclass
class _Slot:
    ticket: StreamTicket
    sequence: int
    sampler: Any
    position: int
    prompt_tokens: int
    last_token: int = -1
    generated: int = 0
    decoder: TokenTextDecoder = field(default_factory=TokenTextDecoder)
    stops: StopStringFilter | None = None
    strip_leading: bool = True
    text_started: bool = False


def _match_context(params: Any, engine: Engine) -> None:
    """Use the chat context's attention and KV settings, so a request gives the same answer either way."""
    import llama_cpp

    from app.core.engine import KV_CACHE_TYPES

    settings = engine.settings
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.type_k = params.type_v = KV_CACHE_TYPES[settings.kv_type]


class BatchDecoder:
    """Decodes up to ``slots`` requests together; :meth:`submit` from any thread, results via the ticket."""

    def __init__(self, engine: Engine, slots: int, n_ctx: int | None = None) -> None:
        import llama_cpp

        llama = engine._llama  # the engine is the owner; this decoder only adds a context over its weights
        if llama is None or engine.settings.vocab_only:
            raise NoModelError("Load a model before serving it.")
        self.engine = engine
        self.vocab = engine.vocab
        self.slots = slots
        self.n_ctx = n_ctx or engine.settings.n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx * slots
        params.n_batch = max(512, slots)
        params.n_ubatch = params.n_batch
        params.n_seq_max = slots
        _match_context(params, engine)
        if engine.settings.n_threads:
            params.n_threads = params.n_threads_batch = engine.settings.n_threads
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self._ctx:
            raise DeskError(f"llama.cpp could not create a context for {slots} parallel requests.")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, slots)
        self._batch_capacity = params.n_batch
        self._incoming: queue.Queue[StreamTicket | None] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batch-decoder", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> StreamTicket:
        ticket = StreamTicket(request)
        self._incoming.put(ticket)
        self._wake.set()
        return ticket

    def close(self) -> None:
        import llama_cpp

        self._stopping = True
        self._incoming.put(None)
        self._wake.set()
        self._thread.join(30)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    # -- the decode loop --------------------------------------------------------------------------

    def _sampler(self, request: GenerationRequest) -> Any:
        import random

        import llama_cpp

        sampling = request.sampling
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _admit(self, ticket: StreamTicket, sequence: int) -> tuple[_Slot, list[int]] | None:
        request = ticket.request
        chat_format = get_format(request.chat_format) if request.chat_format else self.engine.chat_format
        try:
            fitted = fit_prompt(
                request.messages,
                chat_format,
                self.vocab,
                n_ctx=self.n_ctx,
                reserve=reply_reserve(self.n_ctx, request.sampling.max_new_tokens),
                policy=request.context_policy,
            )
        except DeskError as err:
            self._finish_ticket(ticket, error=err)
            return None
        tokens = list(fitted.tokens)
        if len(tokens) > self._batch_capacity:
            self._finish_ticket(ticket, error=DeskError("The prompt is longer than one batch; shorten it."))
            return None
        slot = _Slot(
            ticket,
            sequence,
            self._sampler(request),
            position=0,
            prompt_tokens=len(tokens),
            stops=StopStringFilter(request.sampling.stop),
            strip_leading=chat_format.is_chat,
        )
        return slot, tokens

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        import llama_cpp

        batch = self._batch
        batch.n_tokens = len(items)
        for i, (token, position, sequence, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = logits
        if llama_cpp.llama_decode(self._ctx, batch) != 0:
            raise DeskError("llama.cpp could not decode the batch.")

    def _run(self) -> None:
        import llama_cpp

        active: dict[int, _Slot] = {}
        waiting: list[StreamTicket] = []
        while not self._stopping:
            while True:
                try:
                    item = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                waiting.append(item)
            if not active and not waiting:
                self._wake.wait()
                self._wake.clear()
                continue
            items: list[tuple[int, int, int, bool]] = []
            owners: list[int] = []
            free = [s for s in range(self.slots) if s not in active]
            while waiting and free and len(items) < self._batch_capacity:
                ticket = waiting.pop(0)
                if ticket.cancelled.is_set():
                    self._finish_ticket(ticket, error=None)
                    continue
                admitted = self._admit(ticket, free[0])
                if admitted is None:
                    continue
                slot, tokens = admitted
                if len(items) + len(tokens) + len(active) > self._batch_capacity:
                    llama_cpp.llama_sampler_free(slot.sampler)  # admitted again next step, with room
                    waiting.insert(0, ticket)
                    break
                free.pop(0)
                active[slot.sequence] = slot
                for position, token in enumerate(tokens):
                    items.append((token, position, slot.sequence, position == len(tokens) - 1))
                    if position == len(tokens) - 1:
                        owners.append(slot.sequence)
                slot.position = len(tokens)
            for sequence, slot in active.items():
                if slot.last_token >= 0:
                    items.append((slot.last_token, slot.position, sequence, True))
                    owners.append(sequence)
                    slot.position += 1
            if not items:
                continue
            try:
                self._decode(items)
            except DeskError as err:
                for slot in list(active.values()):
                    self._finish(active, slot, STOP_CANCELLED, error=err)
                continue
            logit_rows = [i for i, item in enumerate(items) if item[3]]
            for row, sequence in zip(logit_rows, owners, strict=True):
                slot = active[sequence]
                token = int(llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, row))
                self._advance(active, slot, token)

    def _advance(self, active: dict[int, _Slot], slot: _Slot, token: int) -> None:
        sampling = slot.ticket.request.sampling
        if slot.ticket.cancelled.is_set():
            self._finish(active, slot, STOP_CANCELLED)
            return
        if self.vocab.is_end_of_generation(token):
            self._finish(active, slot, STOP_EOS)
            return
        slot.generated += 1
        slot.last_token = token
        assert slot.stops is not None
        text, stopped = slot.stops.push(slot.decoder.decode(self.vocab.token_bytes(token)))
        if slot.strip_leading and not slot.text_started:
            text = text.lstrip()
            slot.text_started = bool(text)
        if text:
            slot.ticket.deltas.put(text)
        if stopped:
            self._finish(active, slot, STOP_STRING)
        elif sampling.max_new_tokens and slot.generated >= sampling.max_new_tokens:
            self._finish(active, slot, STOP_MAX_TOKENS)
        elif slot.position + 1 >= self.n_ctx:
            self._finish(active, slot, STOP_CONTEXT_FULL)

    def _finish(self, active: dict[int, _Slot], slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        import llama_cpp

        if reason not in (STOP_STRING, STOP_CANCELLED) and slot.stops is not None:
            tail = slot.stops.flush() + slot.decoder.flush()
            if tail:
                slot.ticket.deltas.put(tail)
        llama_cpp.llama_memory_seq_rm(self._memory, slot.sequence, -1, -1)
        llama_cpp.llama_sampler_free(slot.sampler)
        active.pop(slot.sequence, None)
        stats = GenerationStats(
            prompt_tokens=slot.prompt_tokens,
            prompt_tokens_cached=0,
            prompt_tokens_evaluated=slot.prompt_tokens,
            generated_tokens=slot.generated,
            time_to_first_token_s=0.0,
            prompt_tokens_per_s=0.0,
            generation_tokens_per_s=0.0,
            total_time_s=0.0,
            stop_reason=reason,
            context_used=slot.position,
            context_size=self.n_ctx,
            dropped_messages=0,
        )
        self._finish_ticket(slot.ticket, error=error, stats=stats)

    @staticmethod
    def _finish_ticket(
        ticket: StreamTicket, *, error: BaseException | None, stats: GenerationStats | None = None
    ) -> None:
        ticket.error = error
        ticket.stats = stats
        ticket.deltas.put(_DONE)
        ticket.finished.set()
