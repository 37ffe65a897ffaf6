"""A remote OpenAI-compatible endpoint as a model source: vLLM across GPUs, llama.cpp's llama-server, Ollama,
or another Mixtral Desk. It offers the engine's interface (``load``, ``generate``, ``cancel``), so the console
chat and the chat window work the same with it; stats come from the stream's usage where the server sends it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.core.engine import (
    STOP_CANCELLED,
    STOP_EOS,
    STOP_MAX_TOKENS,
    GenerationRequest,
    GenerationStats,
    ModelInfo,
)
from app.core.errors import DeskError, NoModelError


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


class RemoteGeneration:
    """One streamed reply from the remote model; the same surface as :class:`app.core.engine.Generation`."""

    def __init__(self, engine: RemoteEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
        self.stats: GenerationStats | None = None
        self.prompt = None
        self.text = ""
        self.tokens_generated = 0
        self._cancel = threading.Event()
        self._iterator: Iterator[str] | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def run_to_end(self) -> str:
        for _ in self:
            pass
        return self.text

    def _run(self) -> Iterator[str]:
        settings = self._engine.remote
        client = self._engine.client()
        sampling = self.request.sampling
        messages = [{"role": m.role, "content": m.content} for m in self.request.messages]
        start = time.perf_counter()
        first = 0.0
        reason = STOP_EOS
        usage: Any = None
        try:
            stream = client.chat.completions.create(
                model=settings.model,
                messages=messages,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens or None,
                stop=list(sampling.stop) or None,
                seed=sampling.seed,
                stream=True,
                stream_options={"include_usage": True},
            )
            try:
                for chunk in stream:
                    if self._cancel.is_set():
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
                            self.tokens_generated += 1
                            self.text += delta
                            yield delta
            finally:
                stream.close()  # also what tells the server to stop when we cancel
        except DeskError:
            raise
        except Exception as err:
            raise _translate(err, settings) from err
        end = time.perf_counter()
        generated = int(getattr(usage, "completion_tokens", 0) or self.tokens_generated)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        decode = end - first if first else 0.0
        self.stats = GenerationStats(
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


class RemoteEngine:
    """A model served elsewhere, used like a local :class:`app.core.engine.Engine`."""

    def __init__(self, remote: RemoteSettings) -> None:
        self.remote = remote
        self.info: ModelInfo | None = None
        self._client: Any = None
        self._current: RemoteGeneration | None = None

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

    def load(self, settings: object = None) -> ModelInfo:
        """Check that the endpoint answers and serves the model; ``settings`` is accepted for symmetry."""
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

    def generate(self, request: GenerationRequest) -> RemoteGeneration:
        if self.info is None:
            raise NoModelError("Connect to the remote model first.")
        generation = RemoteGeneration(self, request)
        self._current = generation
        return generation

    def cancel(self) -> None:
        if self._current is not None:
            self._current.cancel()
