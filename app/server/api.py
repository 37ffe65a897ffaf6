"""The OpenAI-compatible endpoints (FastAPI): /v1/models (and /v1/models/{id}), /v1/chat/completions (SSE
streaming or not), /v1/completions, llama.cpp's /tokenize and /detokenize, and /health. Chat uses the same exact
Mixtral formatting as the app.

Safe by default: the CLI binds to 127.0.0.1 and answers Host names of this machine only; with an API key every
request needs ``Authorization: Bearer`` (see :mod:`app.server.guards`). Every error, 404 and 405 included, is
OpenAI's JSON shape, and no request can stop the server answering the next one.
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
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ContextOverflowError, DeskError
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import STOP_CONTEXT_FULL, STOP_MAX_TOKENS, STOP_TOOL_CALLS, GenerationRequest
from app.server.guards import LOOPBACK_NAMES, RequestGuard, error_body
from app.server.schema import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    RequestProblem,
    SamplingFields,
    TokenizeRequest,
)
from app.server.service import ServedModel

MAX_BODY_BYTES = 1024 * 1024
ENDPOINTS = (
    "GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST /tokenize, POST /detokenize, GET /health"
)


def error(
    status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> Response:
    # ASCII-escaped JSON: an echoed client string (a model name with a lone surrogate) cannot break the reply
    return Response(error_body(message, kind, code, param), status_code=status, media_type="application/json")


def finish_reason(stop_reason: str) -> str:
    if stop_reason == STOP_TOOL_CALLS:
        return "tool_calls"
    return "length" if stop_reason in (STOP_MAX_TOKENS, STOP_CONTEXT_FULL) else "stop"


def tool_calls_of(ticket: ReplyTicket) -> list[dict[str, Any]]:
    """The reply's tool calls in OpenAI's shape (with their index, which streamed deltas need)."""
    return [
        {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(ticket.tool_calls)
    ]


def unread_tool_text(ticket: ReplyTicket) -> str:
    """What a reply wrote after the tool-call token when it was not read as calls (cut short): shown as text."""
    return ticket.tool_text if ticket.tool_text and not ticket.tool_calls else ""


def create_app(
    service: ServedModel,
    *,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES,
    cors_origins: tuple[str, ...] = (),
    any_model_name: bool = False,
) -> Any:
    """The ASGI app serving ``service``'s model, behind :class:`RequestGuard`.

    ``any_model_name``: answer whatever model name a client sends (as llama-server does), for clients that
    send a fixed one such as "gpt-4o-mini"; otherwise an unknown name is a 404.
    """
    app = FastAPI(title="Mixtral Desk API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error(400, "The request body is not valid JSON.", code="invalid_json")
        if not where and first.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            return error(400, "The request body must be a JSON object.", code="invalid_json")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return error(400, f"Invalid value for {where or 'the request'}: {message}.", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"There is no {request.method} {request.url.path} here; this server offers {ENDPOINTS}."
            return error(404, message, code="not_found")
        if exc.status_code == 405:
            return error(405, f"{request.url.path} does not accept {request.method}.", code="method_not_allowed")
        if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, not JSON)
            return error(400, "The request body is not valid JSON in UTF-8.", code="invalid_json")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestProblem)
    async def unsupported(request: Request, exc: RequestProblem) -> Response:
        return error(400, str(exc), param=exc.param)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        return error(500, f"The server failed: {type(exc).__name__}: {exc}", kind="server_error")

    @app.get("/health", response_model=None)
    async def health() -> Any:
        state = service.health()
        status = "ok" if state.alive and state.model else ("loading" if state.alive else "error")
        body = {
            "status": status,
            "model": service.model_id,
            "active": state.active,
            "queued": state.queued,
            "cached_tokens": state.cached_tokens,
        }
        return body if status == "ok" else JSONResponse(body, status_code=503)

    def model_card() -> dict[str, Any]:
        return {"id": service.model_id, "object": "model", "created": 0, "owned_by": "mixtral-desk"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", response_model=None)
    async def model(model_id: str) -> Any:
        return check_model(model_id) or model_card()

    def check_model(name: str) -> Response | None:
        if name != service.model_id and not any_model_name:
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
        return await respond(request, body, body.generation(), chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if (problem := check_model(body.model)) is not None:
            return problem
        return await respond(request, body, body.generation(), chat=False)

    @app.post("/tokenize", response_model=None)
    async def tokenize(body: TokenizeRequest) -> Any:
        host = service.host()
        if host is None:
            return error(400, "Tokenizing needs a local model; this server relays a remote one.")
        try:
            tokens = await asyncio.wrap_future(
                host.submit_call(lambda: host.tokenize(body.content, special=body.add_special))
            )
        except DeskError as err:
            return error(400, str(err), param="content")
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = await asyncio.wrap_future(host.submit_call(lambda: [host.detokenize([t]) for t in tokens]))
        return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)]}

    @app.post("/detokenize", response_model=None)
    async def detokenize(body: DetokenizeRequest) -> Any:
        host = service.host()
        if host is None:
            return error(400, "Detokenizing needs a local model; this server relays a remote one.")
        try:
            text = await asyncio.wrap_future(host.submit_call(lambda: host.detokenize(body.tokens)))
        except DeskError as err:
            return error(400, str(err), param="tokens")
        return {"content": text}

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
        text = "".join(text_parts) + unread_tool_text(ticket)
        usage = usage_of(ticket)
        reason = finish_reason(stats.stop_reason) if stats else "stop"
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if ticket.tool_calls:
                message["content"] = text or None
                message["tool_calls"] = tool_calls_of(ticket)
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
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
                if tail := unread_tool_text(ticket):
                    yield chunk({"content": tail} if chat else tail, None)
                if ticket.tool_calls:
                    yield chunk({"tool_calls": tool_calls_of(ticket)}, None)
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

    return RequestGuard(
        app, api_key=api_key, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts, cors_origins=cors_origins
    )


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


def usage_of(ticket: Any) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens the engine host reused from its prefix cache."""
    stats = ticket.stats
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generated_tokens if stats else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": stats.prompt_tokens_cached if stats else 0},
    }


def failure(err: BaseException) -> Response:
    if isinstance(err, ContextOverflowError):
        return error(400, str(err), code="context_length_exceeded", param="messages")
    if isinstance(err, DeskError):
        return error(400, str(err))
    return error(500, f"The model failed: {type(err).__name__}: {err}", kind="server_error")
