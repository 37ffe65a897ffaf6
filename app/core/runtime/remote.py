"""A remote OpenAI-compatible endpoint as a model source: vLLM across GPUs, llama.cpp's llama-server, Ollama,
or another Mixtral Desk. It implements :class:`app.core.runtime.protocol.ChatEngine` like the local engine host,
so the console chat, the chat window and the API server work the same with it; replies stream through the same
tickets (fed by a small pool of worker threads); stats come from the stream's usage where the server sends it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.core.errors import DeskError, NoModelError
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import (
    STOP_CANCELLED,
    STOP_EOS,
    STOP_MAX_TOKENS,
    GenerationRequest,
    GenerationStats,
    HostHealth,
    LoadSettings,
    ModelInfo,
)


class RemoteError(DeskError):
    """The remote endpoint could not be reached or refused the request; the message says which and why."""


@dataclass(frozen=True)
class RemoteSettings:
    """Where the model runs: ``base_url`` like ``http://gpu-box:8000/v1``, an optional key, the model name."""

    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 60.0


def _translate(err: Exception, settings: RemoteSettings) -> RemoteError:
    import openai

    where = settings.base_url
    if isinstance(err, openai.AuthenticationError):
        return RemoteError(f"{where} refused the API key: check the key in the remote model settings.")
    if isinstance(err, openai.NotFoundError):
        return RemoteError(f"{where} does not serve a model called '{settings.model}'.")
    if isinstance(err, openai.APITimeoutError):
        return RemoteError(f"{where} did not answer within {settings.timeout_s:.0f} s.")
    if isinstance(err, openai.APIConnectionError):
        return RemoteError(f"Cannot connect to {where}: is the server running and the address right?")
    if isinstance(err, openai.APIStatusError):
        message = getattr(err, "message", "") or str(err)
        return RemoteError(f"{where} answered {err.status_code}: {message}")
    return RemoteError(f"{where}: {type(err).__name__}: {err}")


class RemoteEngine:
    """A model served elsewhere, used like the local :class:`app.core.runtime.host.EngineHost`."""

    def __init__(self, remote: RemoteSettings, *, max_parallel: int = 4) -> None:
        self.remote = remote
        self.info: ModelInfo | None = None
        self._client: Any = None
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="remote-engine")
        self._lock = threading.Lock()
        self._active = 0
        self._queued = 0
        self._last_error = ""

    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self.remote.base_url,
                api_key=self.remote.api_key or "none",
                timeout=self.remote.timeout_s,
                max_retries=1,
            )
        return self._client

    @property
    def loaded(self) -> bool:
        return self.info is not None

    def load_async(self, settings: LoadSettings | None = None) -> Future[ModelInfo]:
        """Check in the background that the endpoint answers and serves the model."""
        return self._pool.submit(self._connect)

    def load(self, settings: LoadSettings | None = None) -> ModelInfo:
        return self.load_async(settings).result()

    def cancel_load(self) -> None:
        """Nothing to abort: connecting ends by itself within the timeout."""

    def _connect(self) -> ModelInfo:
        try:
            names = [m.id for m in self.client().models.list().data]
        except Exception as err:
            raise _translate(err, self.remote) from err
        if self.remote.model not in names:
            raise RemoteError(
                f"{self.remote.base_url} serves {', '.join(names) or 'no models'}, not '{self.remote.model}'."
            )
        self.info = ModelInfo(
            path=f"{self.remote.base_url.rstrip('/')}/{self.remote.model}",
            name=self.remote.model,
            architecture="remote",
            chat_format="remote",
            n_ctx=0,
            n_ctx_train=0,
            n_vocab=0,
            expert_count=0,
            expert_used_count=0,
            n_gpu_layers=0,
            file_size=0,
            notes=(f"served by {self.remote.base_url}",),
        )
        return self.info

    def unload(self) -> None:
        self.info = None

    def unload_async(self) -> Future[None]:
        self.unload()
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def generate(self, request: GenerationRequest) -> ReplyTicket:
        ticket = ReplyTicket(request)
        if self.info is None:
            ticket.finish(error=NoModelError("Connect to the remote model first."))
            return ticket
        if missing := _not_relayed(request):
            ticket.finish(error=DeskError(f"{missing} is not relayed to a remote model yet; use a local model for it."))
            return ticket
        with self._lock:
            self._queued += 1
        self._pool.submit(self._stream, ticket)
        return ticket

    def health(self) -> HostHealth:
        return HostHealth(
            alive=True,
            model=self.info.name if self.info else None,
            active=self._active,
            queued=self._queued,
            cached_tokens=0,
            kv_cells=0,
            error=self._last_error,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stream(self, ticket: ReplyTicket) -> None:
        with self._lock:
            self._queued -= 1
            self._active += 1
        try:
            stats = self._run(ticket)
        except DeskError as err:
            self._last_error = str(err)
            ticket.finish(error=err)
        except Exception as err:
            translated = _translate(err, self.remote)
            self._last_error = str(translated)
            ticket.finish(error=translated)
        else:
            ticket.finish(stats=stats)
        finally:
            with self._lock:
                self._active -= 1

    def _run(self, ticket: ReplyTicket) -> GenerationStats:
        settings = self.remote
        request = ticket.request
        sampling = request.sampling
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        start = time.perf_counter()
        first = 0.0
        reason = STOP_EOS
        usage: Any = None
        pieces = 0
        if ticket.cancelled:
            reason = STOP_CANCELLED
        else:
            stream = self.client().chat.completions.create(
                model=settings.model,
                messages=messages,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens or None,
                stop=list(sampling.stop) or None,
                seed=sampling.seed,
                presence_penalty=sampling.presence_penalty,
                frequency_penalty=sampling.frequency_penalty,
                stream=True,
                stream_options={"include_usage": True},
            )
            try:
                for chunk in stream:
                    if ticket.cancelled:
                        reason = STOP_CANCELLED
                        break
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.finish_reason == "length":
                            reason = STOP_MAX_TOKENS
                        delta = choice.delta.content or ""
                        if delta:
                            if not first:
                                first = time.perf_counter()
                            pieces += 1
                            ticket.push(delta)
            finally:
                stream.close()  # also what tells the server to stop when we cancel
        end = time.perf_counter()
        generated = int(getattr(usage, "completion_tokens", 0) or pieces)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        decode = end - first if first else 0.0
        return GenerationStats(
            prompt_tokens=prompt,
            prompt_tokens_cached=0,
            prompt_tokens_evaluated=prompt,
            generated_tokens=generated,
            time_to_first_token_s=round((first or end) - start, 4),
            prompt_tokens_per_s=0.0,
            generation_tokens_per_s=round((generated - 1) / decode, 2) if decode > 0 and generated > 1 else 0.0,
            total_time_s=round(end - start, 4),
            stop_reason=reason,
            context_used=prompt + generated,
            context_size=0,
            dropped_messages=0,
        )


def _not_relayed(request: GenerationRequest) -> str:
    """What ``request`` asks for that this relay would drop ("" when nothing): said, never ignored."""
    sampling = request.sampling
    if request.tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
        return "Tool calling"
    if sampling.grammar:
        return "JSON output (response_format)"
    if sampling.top_logprobs >= 0:
        return "logprobs"
    if sampling.logit_bias:
        return "logit_bias"
    return ""
