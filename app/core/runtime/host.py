"""The engine host: the one owner of a loaded model's llama.cpp objects, on one worker thread.

Everything else submits work and gets a ticket or a future back:

    host = EngineHost()
    host.load(LoadSettings(model_path="model.gguf"))          # blocking; load_async() returns a Future
    ticket = host.generate(GenerationRequest((Message("user", "Hi"),)))
    for delta in ticket:
        print(delta, end="")
    print(ticket.stats)

Continuous batching: every running reply is a sequence in the same llama.cpp batch, each with its own KV
sequence id and sampler chain. A new request joins at the next step; a finished or cancelled one leaves
without stalling the others; a long prompt is prefilled in chunks of ``n_batch`` interleaved with the running
sequences' decode steps. A finished sequence keeps its KV cells, and the next request whose tokens start the
same way reuses them (a request that continues no cached conversation takes the least recently used one).

Each sequence has its own ``n_ctx`` KV cells, so a reply is the same whatever runs beside it. A request is
admitted when a sequence is free; otherwise it waits, in arrival order.

Other jobs (load, unload, tokenize, routing traces, measurements) run on the same thread between two decode
steps; those that need the context to themselves wait until no reply is running.

Streamed text reaches consumers in rounds (see ``STREAM_FLUSH_INTERVAL_S``): every ticket is flushed together,
so the API server's event loop wakes once per round however many streams it serves.
"""

from __future__ import annotations

import contextlib
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from app.core.context import POLICIES, fit_prompt, reply_reserve
from app.core.errors import NOT_UNICODE, DeskError, NoModelError, PromptFormatError
from app.core.prompts import FORMAT_PLAIN, ChatFormat, Message, get_format
from app.core.runtime.decoding import KVSequence, RunningReply
from app.core.runtime.devices import watch_device_loss
from app.core.runtime.grammars import tool_calls_grammar
from app.core.runtime.loading import LoadCancelled, LoadedModel, open_model
from app.core.runtime.native import Batch, NativeVocab, SamplerChain
from app.core.runtime.prompt_cache import PromptCache, auto_budget, worth_restoring
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import (
    STOP_CANCELLED,
    STOP_ERROR,
    TOOL_CHOICES,
    GenerationRequest,
    GenerationStats,
    HostHealth,
    LoadSettings,
    ModelInfo,
    SamplingSettings,
)

T = TypeVar("T")

# Streamed text is handed to consumers in rounds at most this far apart (a reply's first text at once): a slow
# model still streams every token; a fast one wakes its readers ~60 times a second, not 2 000.
STREAM_FLUSH_INTERVAL_S = 0.015


class HostError(DeskError):
    """llama.cpp failed while decoding; the replies in that batch end with this error, the host keeps serving."""


@dataclass
class _Call:
    work: Callable[[], Any]
    future: Future[Any]
    exclusive: bool = False  # needs the context to itself: waits until no reply is running


@dataclass
class _Waiting:
    ticket: ReplyTicket
    leader: ReplyTicket | None = None  # another reply to the same prompt: start from its KV cells
    submitted_at: float = field(default_factory=time.perf_counter)


class EngineHost:
    """Owns one loaded model and decodes every reply to it in one batch per step. Thread-safe API."""

    def __init__(self, name: str = "engine-host") -> None:
        self._jobs: queue.SimpleQueue[_Call | _Waiting | None] = queue.SimpleQueue()
        self._loaded: LoadedModel | None = None
        self.info: ModelInfo | None = None
        self._sequences: list[KVSequence] = []
        self._running: list[RunningReply] = []  # the replies being decoded, in sequence id order (see _place)
        self._waiting: list[_Waiting] = []
        self._deferred: list[_Call] = []
        self._batch: Batch | None = None
        self._prompt_cache: PromptCache | None = None  # prompts evicted from their sequence, in RAM
        self._last_error = ""
        self._flushed_at = 0.0
        self._load_abort = threading.Event()
        self._closed = False
        self._current: Future[Any] | None = None  # the call running on the worker now
        self._lost: list[Any] = []  # llama.cpp objects left on a lost device: never freed (see _device_lost)
        self._name = name
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # -- public API (any thread) -------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded (possibly for its tokenizer only)."""
        return self.info is not None

    @property
    def settings(self) -> LoadSettings:
        loaded = self._loaded
        if loaded is None:
            raise NoModelError("No model is loaded.")
        return loaded.settings

    def clear_cache(self) -> None:
        """Forget every finished sequence's cached prefix (the next prompts are evaluated in full)."""
        self.call(self._drop_cache, exclusive=True)

    def load_async(self, settings: LoadSettings) -> Future[ModelInfo]:
        """Load ``settings.model_path`` (replacing any loaded model; running replies end with an error)."""
        self._load_abort.clear()
        return self.submit_call(lambda: self._load(settings))

    def load(self, settings: LoadSettings) -> ModelInfo:
        """:meth:`load_async`, waiting for the result.

        Raises:
            ModelLoadError, DeskError: see :func:`app.core.runtime.loading.open_model`.
        """
        return self.load_async(settings).result()

    def cancel_load(self) -> None:
        """Abort a load in progress (llama.cpp stops at its next progress report)."""
        self._load_abort.set()

    def unload(self) -> None:
        """Free the loaded model (running replies end with an error)."""
        self.call(self._unload)

    def unload_async(self) -> Future[None]:
        """:meth:`unload` without waiting."""
        return self.submit_call(self._unload)

    def generate(self, request: GenerationRequest) -> ReplyTicket:
        """Queue ``request``; its text streams through the returned ticket."""
        ticket = ReplyTicket(request)
        if request.context_policy not in POLICIES:
            ticket.finish(
                error=DeskError(f"Unknown context policy {request.context_policy!r}; use one of {', '.join(POLICIES)}.")
            )
            return ticket
        self._put(_Waiting(ticket))
        return ticket

    def generate_choices(self, request: GenerationRequest, n: int) -> list[ReplyTicket]:
        """Queue ``n`` replies to one ``request`` (each with its own seed: ``seed + i`` when one is given).

        The prompt is evaluated once: the other replies wait until the first has evaluated it, then start
        from a copy of its KV cells (only the prompt's last token is evaluated again, for their own logits).
        """
        sampling = request.sampling
        tickets = [self.generate(request)]
        for index in range(1, n):
            seed = sampling.seed + index if sampling.seed is not None else None
            sibling = ReplyTicket(replace(request, sampling=replace(sampling, seed=seed)))
            tickets.append(sibling)
            self._put(_Waiting(sibling, leader=tickets[0]))
        return tickets

    def submit_call(self, work: Callable[[], T], *, exclusive: bool = False) -> Future[T]:
        """Run ``work()`` on the host thread between decode steps; ``exclusive`` waits until no reply runs."""
        future: Future[T] = Future()
        if threading.current_thread() is self._thread:
            _run_into(work, future)
            return future
        self._put(_Call(work, future, exclusive))
        return future

    def call(self, work: Callable[[], T], *, exclusive: bool = False) -> T:
        """:meth:`submit_call`, waiting for the result (its exception is raised here)."""
        return self.submit_call(work, exclusive=exclusive).result()

    def with_model(self, work: Callable[[LoadedModel], T], *, exclusive: bool = False) -> T:
        """Run ``work(loaded_model)`` on the host thread. Exclusive work may use the main context freely; the
        prefix cache is dropped afterwards."""

        def run() -> T:
            loaded = self._require_model()
            if not exclusive:
                return work(loaded)
            try:
                return work(loaded)
            finally:
                self._drop_cache()

        return self.call(run, exclusive=exclusive)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.with_model(lambda m: m.vocab.encode(text, special=special))

    def detokenize(self, tokens: list[int], *, special: bool = True) -> str:
        return self.with_model(lambda m: m.vocab.decode(tokens, special=special))

    def prompt_tokens(
        self,
        messages: list[Message] | tuple[Message, ...],
        chat_format: str | None = None,
        tools: tuple[dict[str, Any], ...] = (),
    ) -> list[int]:
        """The exact token ids a reply to ``messages`` (with ``tools`` offered) would be fed (before any context
        policy)."""

        def run(loaded: LoadedModel) -> list[int]:
            fmt = get_format(chat_format) if chat_format else loaded.chat_format
            return fmt.with_tools(tools).encode(messages, loaded.vocab)

        return self.with_model(run)

    def health(self) -> HostHealth:
        """Alive, busy, queue length and cache use; cheap, never waits for the worker."""
        sequences = list(self._sequences)
        info = self.info
        return HostHealth(
            alive=self._thread.is_alive() and not self._closed,
            model=info.name if info is not None else None,
            active=len(self._running),
            queued=len(self._waiting),
            cached_tokens=sum(len(s.cached) for s in sequences if s.reply is None),
            kv_cells=info.kv_cells if info is not None else 0,
            error=self._last_error,
        )

    def close(self) -> None:
        """Stop the worker and free the model."""
        if self._closed:
            return
        self._closed = True
        self._put(None)
        self._thread.join(60)

    # -- the worker thread ---------------------------------------------------------------------------

    def _put(self, job: _Call | _Waiting | None) -> None:
        if self._closed and job is not None:
            if isinstance(job, _Waiting):
                job.ticket.finish(error=NoModelError("The engine has shut down."))
            else:
                job.future.set_exception(NoModelError("The engine has shut down."))
            return
        self._jobs.put(job)

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            busy = self._running or self._waiting or self._deferred
            if busy and jobs.empty():
                try:
                    self._step()
                except Exception as err:  # never let the worker die: fail what was running, keep serving
                    self._fail_running(HostError(f"llama.cpp failed while answering: {type(err).__name__}: {err}"))
                continue
            job = jobs.get()  # every queued job is taken before the next step; when idle, sleep until one comes
            if job is None:
                self._shutdown()
                return
            self._take(job)

    def _take(self, job: _Call | _Waiting) -> None:
        if isinstance(job, _Waiting):
            self._waiting.append(job)
            return
        if job.exclusive and self._running:
            self._deferred.append(job)
            return
        self._flush_streams()  # the job may take a while: hand out held text first
        self._current = job.future
        _run_into(job.work, job.future)
        self._current = None

    def _flush_streams(self) -> None:
        for reply in self._running:
            reply.ticket.flush()

    def _step(self) -> None:
        if self._deferred:
            self._run_deferred()
        loaded = self._loaded
        if loaded is None or loaded.context is None:
            for waiting in self._waiting:
                waiting.ticket.finish(error=NoModelError("No model is loaded; load one before chatting."))
            self._waiting.clear()
            return
        running = self._running
        for reply in running:
            if reply.ticket.cancelled:
                self._drop_cancelled()
                break
        if self._waiting:
            for waiting in [w for w in self._waiting if w.ticket.cancelled]:  # cancelled while waiting: never starts
                self._waiting.remove(waiting)
                waiting.ticket.finish(stats=_empty_stats(STOP_CANCELLED))
            self._admit(loaded)
        if not running:
            return
        context, vocab = loaded.context, loaded.vocab
        batch = self._batch
        assert batch is not None
        batch.clear()
        add = batch.add
        decoding: list[RunningReply] = []  # one new token each
        sampled: list[tuple[int, RunningReply]] = []  # (batch row, reply) to sample after the decode
        prefilled: list[tuple[KVSequence, list[int]]] = []
        spare = batch.capacity - len(running)  # every reply has one row; prompt chunks share the rest
        # rows in increasing sequence id: llama.cpp computes consecutive sequences in one pass (see _admit)
        for reply in running:
            sequence = reply.sequence
            pending = reply.pending
            if not pending:
                sampled.append((add(reply.last_token, len(sequence.cached), sequence.seq_id, True), reply))
                decoding.append(reply)
                continue
            chunk = pending[: spare + 1]
            start = len(sequence.cached)
            last = len(chunk) == len(pending)
            for offset, token in enumerate(chunk):
                row = add(token, start + offset, sequence.seq_id, last and offset == len(chunk) - 1)
            if last:
                sampled.append((row, reply))
            del pending[: len(chunk)]
            prefilled.append((sequence, chunk))
            spare -= len(chunk) - 1
        if prefilled:
            self._flush_streams()  # a prefill chunk makes this a long step: hand out held text first
        status = context.decode(batch)
        if status != 0:
            self._decode_failed(status, [r.sequence for r in decoding] + [sequence for sequence, _ in prefilled])
            return
        for reply in decoding:
            reply.sequence.cached.append(reply.last_token)
        for sequence, chunk in prefilled:
            sequence.cached.extend(chunk)
            if sequence.reply is not None:
                sequence.reply.ticket.prompt_done += len(chunk)
        for row, reply in sampled:
            token = reply.sampler.sample(context, row)
            logprobs = context.logprobs(row, vocab, token, reply.top_logprobs) if reply.top_logprobs >= 0 else None
            reason = reply.accept(token, vocab, logprobs)
            if reason is not None:
                self._finish(reply, reason)
        now = time.perf_counter()
        if now - self._flushed_at >= STREAM_FLUSH_INTERVAL_S:  # one wake-up round for every stream
            self._flushed_at = now
            self._flush_streams()

    # -- admission and the prefix cache ----------------------------------------------------------

    def _admit(self, loaded: LoadedModel) -> None:
        while self._waiting:
            free = [s for s in self._sequences if s.reply is None]
            if not free:
                return  # wait, in arrival order, for a sequence to finish
            waiting = self._waiting[0]
            request = waiting.ticket.request
            leader = self._running_reply(waiting.leader)
            if leader is not None and leader.pending:
                return  # it waits (and, in arrival order, those behind it) until the shared prompt is evaluated
            try:
                tokens, prompt, chat_format = self._prompt_for(loaded, request)
                sampling, tool_marker = _tool_sampling(request, chat_format, loaded.vocab)
                _check_sampling(sampling, loaded.vocab.size)
                seed = sampling.seed if sampling.seed is not None else loaded.settings.seed
                seed = seed if seed is not None else random.randrange(2**31)
                sampler = SamplerChain(sampling, loaded.vocab.size, seed, loaded.vocab)
            except Exception as err:  # this request's problem (its prompt, its grammar): it alone fails
                self._waiting.pop(0)
                waiting.ticket.finish(error=_as_request_error(err))
                continue
            n_ctx = loaded.settings.n_ctx
            if leader is not None:
                sequence, reused = self._place_beside(free, leader.sequence, tokens, loaded)
            else:
                # every free sequence taken this round: the running ones end up consecutive whatever goes where
                fills_all = len(self._waiting) >= len(free)
                sequence, reused = self._place(free, tokens, loaded, fills_all=fills_all)
            self._waiting.pop(0)
            reused = min(reused, len(tokens) - 1)  # the last prompt token is always evaluated, for its logits
            if leader is None and self._prompt_cache is not None:
                reused = self._from_ram(sequence, tokens, reused, loaded)
            loaded.context.forget(sequence.seq_id, reused)  # type: ignore[union-attr]
            del sequence.cached[reused:]
            sampler.accept(tokens)
            waiting.ticket.prompt = prompt
            waiting.ticket.prompt_total, waiting.ticket.prompt_done = len(tokens), reused
            reply = RunningReply(
                waiting.ticket,
                sequence,
                sampler,
                tokens,
                reused,
                n_ctx=n_ctx,
                is_chat=chat_format.is_chat,
                prompt=prompt,
                submitted_at=waiting.submitted_at,
                tool_marker=tool_marker,
                tool_reader=chat_format.read_tool_calls,
            )
            sequence.reply = reply
            self._running.append(reply)
            self._running.sort(key=lambda r: r.sequence.seq_id)

    def _place(
        self, free: list[KVSequence], tokens: list[int], loaded: LoadedModel, *, fills_all: bool = False
    ) -> tuple[KVSequence, int]:
        """The sequence a new reply runs on and how many cached tokens it reuses.

        With one KV stream per sequence llama.cpp computes a batch in one pass only over consecutive sequence
        ids; a gap ({0, 2}) or disorder splits it into passes, measured 20-40 % slower. So a reply goes next to
        the running ones: on a free neighbour, and when the cache it continues lies elsewhere, that cache is
        copied over to the neighbour first (a copy of one KV stream, far cheaper than evaluating it again).
        When the requests admitted together take every free sequence (``fills_all``) there can be no gap, and
        each goes where its cache is: moving one cache over a neighbour would overwrite the cache another of
        them continues (four clients resending their prompts would evaluate them all again).
        """
        sequence, reused = _choose_sequence(free, tokens)
        running_ids = {r.sequence.seq_id for r in self._running}
        if fills_all or not running_ids or _next_to(sequence.seq_id, running_ids):
            return sequence, reused
        neighbours = [s for s in free if _next_to(s.seq_id, running_ids)]
        if not neighbours:
            return sequence, reused
        target = min(neighbours, key=lambda s: (len(s.cached) > 0, s.last_used))
        self._keep_in_ram(target, loaded)
        if reused:
            loaded.context.move_sequence(sequence.seq_id, target.seq_id)  # type: ignore[union-attr]
            target.cached, sequence.cached = sequence.cached, []
            target.last_used = sequence.last_used
            return target, reused
        return target, target.common_prefix(tokens)

    def _place_beside(
        self, free: list[KVSequence], leader: KVSequence, tokens: list[int], loaded: LoadedModel
    ) -> tuple[KVSequence, int]:
        """A free sequence (next to the running ones when one is) holding a copy of the running ``leader``'s
        cells, and how many of them the new reply reuses."""
        running_ids = {r.sequence.seq_id for r in self._running}
        neighbours = [s for s in free if _next_to(s.seq_id, running_ids)] or free
        target = min(neighbours, key=lambda s: (len(s.cached) > 0, s.last_used))
        self._keep_in_ram(target, loaded)
        loaded.context.copy_sequence(leader.seq_id, target.seq_id)  # type: ignore[union-attr]
        target.cached = list(leader.cached)
        return target, leader.common_prefix(tokens)

    def _keep_in_ram(self, sequence: KVSequence, loaded: LoadedModel, keep: int = 0) -> None:
        """Save ``sequence``'s cells to the prompt cache before all but its first ``keep`` are overwritten."""
        cache = self._prompt_cache
        lost = len(sequence.cached) - keep
        if cache is None or not worth_restoring(lost, len(sequence.cached)) or not cache.wants(sequence.cached):
            return  # (the next turn of a conversation loses a few cells at its end: not worth a copy)
        cache.put(sequence.cached, loaded.context.save_sequence(sequence.seq_id))  # type: ignore[union-attr]

    def _from_ram(self, sequence: KVSequence, tokens: list[int], reused: int, loaded: LoadedModel) -> int:
        """Save what ``sequence`` is about to lose; copy back a saved prompt that continues ``tokens`` further
        than the ``reused`` cells it holds. Returns the cells the reply now reuses."""
        cache = self._prompt_cache
        assert cache is not None and loaded.context is not None
        self._keep_in_ram(sequence, loaded, keep=reused)
        found = cache.best(tokens)
        if found is None:
            return reused
        saved, length = found
        length = min(length, len(tokens) - 1)
        if not worth_restoring(length - reused, len(saved.tokens)):
            return reused
        if not loaded.context.restore_sequence(sequence.seq_id, saved.state):
            sequence.cached.clear()  # llama.cpp dropped what the sequence held
            return 0
        sequence.cached = list(saved.tokens)
        return length

    def _running_reply(self, ticket: ReplyTicket | None) -> RunningReply | None:
        if ticket is None:
            return None
        return next((r for r in self._running if r.ticket is ticket), None)

    def _prompt_for(self, loaded: LoadedModel, request: GenerationRequest) -> tuple[list[int], Any, ChatFormat]:
        chat_format = get_format(request.chat_format) if request.chat_format else loaded.chat_format
        chat_format = chat_format.with_tools(request.tools)  # refused by a format that cannot offer tools
        n_ctx = loaded.settings.n_ctx
        if request.prompt_tokens is not None:
            tokens = list(request.prompt_tokens)
            prompt = None
            if len(tokens) >= n_ctx:
                raise DeskError(f"The prompt has {len(tokens)} tokens; the context holds {n_ctx}.")
        else:
            if not request.messages or (
                chat_format.name == FORMAT_PLAIN and not any(m.content for m in request.messages)
            ):
                raise PromptFormatError("The prompt is empty: write a message (or some text to continue) first.")
            prompt = fit_prompt(
                request.messages,
                chat_format,
                loaded.vocab,
                n_ctx=n_ctx,
                reserve=reply_reserve(n_ctx, request.sampling.max_new_tokens),
                policy=request.context_policy,
            )
            tokens = list(prompt.tokens)
        if not tokens:
            raise PromptFormatError("The prompt is empty: write a message (or some text to continue) first.")
        vocab_size = loaded.vocab.size
        if any(t < 0 or t >= vocab_size for t in tokens):
            raise DeskError(f"The prompt holds token ids outside this model's vocabulary (0..{vocab_size - 1}).")
        return tokens, prompt, chat_format

    def _drop_cancelled(self) -> None:
        for reply in [r for r in self._running if r.ticket.cancelled]:
            self._finish(reply, STOP_CANCELLED)

    def _finish(self, reply: RunningReply, reason: str, error: BaseException | None = None) -> None:
        sequence = reply.sequence
        sequence.reply = None
        sequence.last_used = time.perf_counter()
        self._running.remove(reply)
        reply.sampler.close()
        if error is not None:
            if self._loaded is not None and self._loaded.context is not None:
                self._loaded.context.forget(sequence.seq_id)
            sequence.cached.clear()
            reply.ticket.finish(stats=reply.stats(STOP_ERROR), error=error)
            return
        reason = reply.finish_text(reason)
        reply.ticket.finish(stats=reply.stats(reason))

    def _decode_failed(self, status: int, sequences: list[KVSequence]) -> None:
        if status == 1:
            message = (
                "The KV cache is full: the running conversations need more cells than the context holds. "
                "Raise the context size or serve fewer requests at once."
            )
        else:
            message = f"llama.cpp could not decode the batch (status {status})."
        self._last_error = message
        for sequence in sequences:
            if sequence.reply is not None:
                self._finish(sequence.reply, STOP_ERROR, HostError(message))

    def _fail_running(self, error: BaseException) -> None:
        self._last_error = str(error)
        for reply in list(self._running):
            self._finish(reply, STOP_ERROR, error)
        self._drop_cache()

    def _drop_cache(self) -> None:
        loaded = self._loaded
        if loaded is not None and loaded.context is not None:
            loaded.context.clear()
        for sequence in self._sequences:
            sequence.cached.clear()
        if self._prompt_cache is not None:
            self._prompt_cache.clear()

    def _run_deferred(self) -> None:
        if self._deferred and not self._running:
            deferred, self._deferred = self._deferred, []
            for job in deferred:
                self._current = job.future
                _run_into(job.work, job.future)
                self._current = None

    def _device_lost(self, message: str) -> None:
        """An RPC worker of the loaded model stopped answering (called on llama.cpp's RPC thread): the worker
        thread waits on it for good. Fail what was running, give up the model (freeing it would ask the dead
        worker again) and serve on with a new worker thread, with no model loaded."""
        error = HostError(
            "An offload device stopped answering, so the model placed on it is lost "
            f"(llama.cpp: {message.rpartition(': ')[2] or message}). Start the RPC worker again, or remove it in "
            "Settings, and load the model again."
        )
        self._last_error = str(error)
        self._lost.append((self._loaded, self._batch, self._running))
        self._loaded, self.info, self._batch, self._sequences = None, None, None, []
        running, self._running = self._running, []
        waiting, self._waiting = self._waiting, []
        current, self._current = self._current, None
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()  # serving again before anyone hears of the loss
        for reply in running:
            reply.ticket.finish(stats=reply.stats(STOP_ERROR), error=error)
        for item in waiting:
            item.ticket.finish(error=error)
        if current is not None and not current.done():
            current.set_exception(error)

    # -- load / unload (on the worker) ---------------------------------------------------------------

    def _require_model(self) -> LoadedModel:
        if self._loaded is None:
            raise NoModelError("No model is loaded.")
        return self._loaded

    def _load(self, settings: LoadSettings) -> ModelInfo:
        self._unload()
        if settings.rpc_workers:
            watch_device_loss(self, self._device_lost)
        try:
            loaded = open_model(settings, should_abort=self._load_abort.is_set)
        except BaseException:
            watch_device_loss(self, None)
            raise
        if self._load_abort.is_set():
            loaded.close()
            raise LoadCancelled("Loading was cancelled.")
        self._loaded = loaded
        if loaded.context is not None:
            self._sequences = [KVSequence(i) for i in range(loaded.context.n_seq_max)]
            self._batch = Batch(loaded.context.n_batch, 1)
            budget = _prompt_cache_budget(settings, loaded.info.file_size)
            self._prompt_cache = PromptCache(budget) if budget > 0 else None
        self.info = loaded.info
        return loaded.info

    def _unload(self) -> None:
        gone = NoModelError("The model was unloaded while answering.")
        for reply in list(self._running):
            self._finish(reply, STOP_ERROR, gone)
        self._sequences = []
        self._prompt_cache = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        loaded, self._loaded = self._loaded, None
        self.info = None
        if loaded is not None:
            loaded.close()
        watch_device_loss(self, None)

    def _shutdown(self) -> None:
        for waiting in self._waiting:
            waiting.ticket.finish(error=NoModelError("The engine has shut down."))
        self._waiting.clear()
        for job in self._deferred:
            job.future.set_exception(NoModelError("The engine has shut down."))
        self._deferred.clear()
        with contextlib.suppress(Exception):
            self._unload()
        while True:
            try:
                left = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(left, _Waiting):
                left.ticket.finish(error=NoModelError("The engine has shut down."))
            elif isinstance(left, _Call):
                left.future.set_exception(NoModelError("The engine has shut down."))


def _choose_sequence(free: list[KVSequence], tokens: list[int]) -> tuple[KVSequence, int]:
    """The free sequence to run ``tokens`` on, and how many of its cached tokens it reuses.

    A request goes on a cached sequence when it continues that conversation (keeps at least half of its
    cells: the next turn, an edit near the end) or is almost all cached there (90 % of the prompt: a
    regenerated reply); otherwise on an empty sequence, else the least recently used one. A shared system
    prompt alone is no reason to overwrite another conversation's cache.
    """
    best, best_reused = None, 0
    for sequence in free:
        reused = sequence.common_prefix(tokens)
        worth_it = reused * 2 >= len(sequence.cached) or reused * 10 >= len(tokens) * 9
        if reused and worth_it and reused > best_reused:
            best, best_reused = sequence, reused
    if best is not None:
        return best, best_reused
    fallback = min(free, key=lambda s: (len(s.cached) > 0, s.last_used))
    return fallback, fallback.common_prefix(tokens)


def _prompt_cache_budget(settings: LoadSettings, model_bytes: int) -> int:
    """Bytes of RAM for the prompt cache: the user's choice, else :func:`auto_budget` of the RAM free now."""
    if settings.prompt_cache_mib is not None:
        return max(0, settings.prompt_cache_mib) << 20
    import psutil

    return auto_budget(int(psutil.virtual_memory().available), model_bytes)


def _next_to(seq_id: int, running_ids: set[int]) -> bool:
    return seq_id - 1 in running_ids or seq_id + 1 in running_ids


def _tool_sampling(
    request: GenerationRequest, chat_format: ChatFormat, vocab: NativeVocab
) -> tuple[SamplingSettings, int]:
    """The sampling for a reply offered tools, and the token its calls start with (-1: it may not call).

    ``auto``: free text, and once the model writes the tool-call token a grammar holds the rest to calls of the
    offered tools with arguments that follow their schemas; ``required``: that grammar from the first token;
    ``none``: the tool-call token is never sampled.
    """
    sampling = request.sampling
    if not chat_format.tools:
        return sampling, -1
    choice = "required" if request.required_tool else request.tool_choice
    if choice not in TOOL_CHOICES:
        raise DeskError(f"Unknown tool choice {choice!r}; use one of {', '.join(TOOL_CHOICES)}.")
    marker = chat_format.tool_calls_token(vocab)
    if choice == "none":
        return replace(sampling, logit_bias=(*sampling.logit_bias, (marker, -math.inf))), -1
    if sampling.grammar:
        raise DeskError("A reply cannot both follow a response format and call tools; ask for one of them.")
    grammar = tool_calls_grammar(
        chat_format.tools, marker, only=request.required_tool, parallel=request.parallel_tool_calls
    )
    triggers = () if choice == "required" else (marker,)
    return replace(sampling, grammar=grammar, grammar_triggers=triggers), marker


def _check_sampling(sampling: SamplingSettings, n_vocab: int) -> None:
    """Refuse what llama.cpp's samplers would read out of bounds (a logit bias for a token that is not there)."""
    for token, _bias in sampling.logit_bias:
        if not 0 <= token < n_vocab:
            raise DeskError(f"logit_bias names token {token}, but this model's tokens are numbered 0-{n_vocab - 1}.")


def _run_into(work: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = work()
    except BaseException as err:
        future.set_exception(err)
    else:
        future.set_result(result)


def _as_request_error(err: BaseException) -> BaseException:
    """A request's own failure as a typed, user-facing error."""
    if isinstance(err, DeskError):
        return err
    if isinstance(err, UnicodeError):
        return PromptFormatError(NOT_UNICODE)
    return DeskError(f"The request could not be prepared: {type(err).__name__}: {err}")


def _empty_stats(reason: str) -> GenerationStats:
    return GenerationStats(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, reason, 0, 0, 0)
