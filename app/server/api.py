"""The OpenAI-compatible endpoints (FastAPI): /v1/models, /v1/chat/completions (SSE streaming or not),
/v1/completions and /health. Chat uses the same exact Mixtral formatting as the app.

Safe by default: the CLI binds to 127.0.0.1; with an API key every request needs ``Authorization: Bearer``;
bodies over a limit, unknown models and invalid parameters get 4xx JSON errors in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from app.core.context import POLICY_ROLLING
from app.core.errors import ContextOverflowError, DeskError
from app.core.prompts import FORMAT_PLAIN, Message
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import STOP_CONTEXT_FULL, STOP_MAX_TOKENS, GenerationRequest, SamplingSettings
from app.server.service import ServedModel

MAX_BODY_BYTES = 1024 * 1024


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingFields(BaseModel):
    model: str
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=131072)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    stream_options: dict[str, Any] | None = None

    def sampling(self) -> SamplingSettings:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            repeat_penalty=1.0,  # OpenAI's API has no repeat penalty; clients expect none
            max_new_tokens=self.max_tokens or 1024,
            seed=self.seed,
            stop=tuple(stops[:4]),
        )


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    prompt: str


def error(
    status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason in (STOP_MAX_TOKENS, STOP_CONTEXT_FULL) else "stop"


def create_app(service: ServedModel, *, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving ``service``'s model."""
    app = FastAPI(title="Mixtral Desk API", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health":
            supplied = request.headers.get("authorization", "")
            if supplied != f"Bearer {api_key}":
                return error(
                    401,
                    "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(413, f"The request body is larger than {max_body_bytes} bytes.", code="body_too_large")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error(400, "The request body is not valid JSON.", code="invalid_json")
        return error(
            400, f"Invalid value for {where or 'the request'}: {first.get('msg', 'invalid')}.", param=where or None
        )

    @app.get("/health", response_model=None)
    async def health() -> Any:
        state = service.health()
        body = {**state.to_json(), "status": "ok" if state.alive else "error", "model": service.model_id}
        return body if state.alive else JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": service.model_id, "object": "model", "created": 0, "owned_by": "mixtral-desk"}],
        }

    def check_model(name: str) -> JSONResponse | None:
        if name != service.model_id:
            return error(
                404,
                f"The model '{name}' does not exist here; this server serves '{service.model_id}'.",
                code="model_not_found",
                param="model",
            )
        return None

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Any:
        if (problem := check_model(body.model)) is not None:
            return problem
        generation_request = GenerationRequest(
            tuple(Message(m.role, m.content) for m in body.messages), body.sampling(), POLICY_ROLLING
        )
        return await respond(request, body, generation_request, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if (problem := check_model(body.model)) is not None:
            return problem
        generation_request = GenerationRequest(
            (Message("user", body.prompt),), body.sampling(), POLICY_ROLLING, chat_format=FORMAT_PLAIN
        )
        return await respond(request, body, generation_request, chat=False)

    async def respond(
        request: Request, body: SamplingFields, generation_request: GenerationRequest, *, chat: bool
    ) -> Any:
        ticket = service.submit(generation_request)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                stream(request, ticket, ident, created, chat=chat, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text_parts = []
        reader = TicketReader(ticket)
        try:
            while (delta := await reader.next(request)) is not None:
                text_parts.append(delta)
        finally:
            if not ticket.finished.is_set():
                ticket.cancel()  # the client went away: stop generating for nobody
        if ticket.error is not None:
            return failure(ticket.error)
        stats = ticket.stats
        text = "".join(text_parts)
        usage = usage_of(ticket)
        reason = finish_reason(stats.stop_reason) if stats else "stop"
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
            return {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": service.model_id,
                "choices": [choice],
                "usage": usage,
            }
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": service.model_id,
            "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
            "usage": usage,
        }

    async def stream(
        request: Request, ticket: Any, ident: str, created: int, *, chat: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict[str, Any] | str, reason: str | None) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = delta
            payload = {"id": ident, "object": kind, "created": created, "model": service.model_id, "choices": [choice]}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        reader = TicketReader(ticket)
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""}, None)
            while True:
                delta = await reader.next(request)
                if delta is None:
                    break
                yield chunk({"content": delta} if chat else delta, None)
            if ticket.error is not None:
                problem = failure(ticket.error)
                yield f"data: {bytes(problem.body).decode()}\n\n"
            else:
                stats = ticket.stats
                yield chunk({} if chat else "", finish_reason(stats.stop_reason) if stats else "stop")
                if include_usage:
                    payload = {
                        "id": ident,
                        "object": kind,
                        "created": created,
                        "model": service.model_id,
                        "choices": [],
                        "usage": usage_of(ticket),
                    }
                    yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not ticket.finished.is_set():
                ticket.cancel()  # the client went away: stop generating for nobody

    return app


class TicketReader:
    """Reads a ticket's text on the event loop: the engine's thread wakes the loop when text arrives (at most one
    wake-up pending), and at most every 0.2 s it checks whether the client has gone (then cancels the ticket)."""

    def __init__(self, ticket: ReplyTicket) -> None:
        self.ticket = ticket
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._pending = threading.Event()
        self._last_check = time.monotonic()
        ticket.set_listener(self._wake)

    def _wake(self) -> None:  # on the engine's thread
        if not self._pending.is_set():
            self._pending.set()
            self._loop.call_soon_threadsafe(self._ready.set)

    async def next(self, request: Request) -> str | None:
        """The next delta, or None at the end or when the client disconnected."""
        while True:
            self._pending.clear()
            self._ready.clear()
            try:
                return self.ticket.next_delta(0)
            except queue.Empty:
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 0.2)
            now = time.monotonic()
            if now - self._last_check >= 0.2:
                self._last_check = now
                if await request.is_disconnected():
                    self.ticket.cancel()
                    return None


def usage_of(ticket: Any) -> dict[str, int]:
    stats = ticket.stats
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generated_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def failure(err: BaseException) -> JSONResponse:
    if isinstance(err, ContextOverflowError):
        return error(400, str(err), code="context_length_exceeded", param="messages")
    if isinstance(err, DeskError):
        return error(400, str(err))
    return error(500, f"The model failed: {type(err).__name__}: {err}", kind="server_error")
