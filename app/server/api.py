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
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ContextOverflowError, DeskError
from app.core.runtime.tickets import ReplyTicket
from app.core.runtime.types import (
    STOP_CONTEXT_FULL,
    STOP_MAX_TOKENS,
    STOP_TOOL_CALLS,
    GenerationRequest,
    TokenProb,
)
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
        tickets = service.submit(generation_request, body.n)
        reply = Reply(
            tickets,
            ident=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=service.model_id,
            chat=chat,
            logprobs=generation_request.sampling.top_logprobs >= 0,
        )
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                reply.stream(request, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await reply.whole(request)

    return RequestGuard(
        app, api_key=api_key, max_body_bytes=max_body_bytes, allowed_hosts=allowed_hosts, cors_origins=cors_origins
    )


class TicketReader:
    """Reads tickets' text on the event loop: the engine's thread wakes the loop when text arrives (at most one
    wake-up pending), and at most every 0.2 s it checks whether the client has gone (then cancels them all).

    With ``at_end`` (a reply sent whole) the loop is woken only when a ticket ends: its text is read then, in
    one go, and the engine's thread spends nothing on a client that has nothing to send yet.
    """

    def __init__(self, tickets: list[ReplyTicket], *, at_end: bool = False) -> None:
        self.tickets = tickets
        self._ended: set[int] = set()
        self._turn = 0
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._pending = threading.Event()
        self._last_check = time.monotonic()
        for ticket in tickets:
            ticket.set_listener(partial(self._wake_at_end, ticket) if at_end else self._wake)

    def _wake_at_end(self, ticket: ReplyTicket) -> None:  # on the engine's thread
        if ticket.finished.is_set():
            self._wake()

    def _wake(self) -> None:  # on the engine's thread
        if not self._pending.is_set():
            self._pending.set()
            self._loop.call_soon_threadsafe(self._ready.set)

    async def next(self, request: Request) -> tuple[int, str | None] | None:
        """(choice, its next delta) or (choice, None) when that reply ended; None when all have ended or the
        client disconnected."""
        count = len(self.tickets)
        while len(self._ended) < count:
            self._pending.clear()
            self._ready.clear()
            for step in range(count):  # take turns, so one fast reply cannot starve the others
                index = (self._turn + step) % count
                if index in self._ended:
                    continue
                try:
                    delta = self.tickets[index].next_delta(0)
                except queue.Empty:
                    continue
                self._turn = index + 1
                if delta is None:
                    self._ended.add(index)
                return index, delta
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 0.2)
            now = time.monotonic()
            if now - self._last_check >= 0.2:
                self._last_check = now
                if await request.is_disconnected():
                    self.cancel()
                    return None
        return None

    def cancel(self) -> None:
        """Stop every reply still running (the client went away: generate for nobody)."""
        for ticket in self.tickets:
            if not ticket.finished.is_set():
                ticket.cancel()


class Reply:
    """One response of ``n`` choices, whole or as server-sent events, in OpenAI's chat or completion shape."""

    def __init__(
        self, tickets: list[ReplyTicket], *, ident: str, created: int, model: str, chat: bool, logprobs: bool
    ) -> None:
        self.tickets = tickets
        self.chat = chat
        self.logprobs = logprobs
        self._head: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        self._logprobs_sent = [0] * len(tickets)

    async def whole(self, request: Request) -> Any:
        texts = [""] * len(self.tickets)
        reader = TicketReader(self.tickets, at_end=True)
        try:
            while (item := await reader.next(request)) is not None:
                index, delta = item
                texts[index] += delta or ""
        finally:
            reader.cancel()
        problem = next((t.error for t in self.tickets if t.error is not None), None)
        if problem is not None:
            return failure(problem)
        choices = []
        for index, ticket in enumerate(self.tickets):
            text = texts[index] + unread_tool_text(ticket)
            choice: dict[str, Any] = {"index": index}
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if ticket.tool_calls:
                    message["content"] = text or None
                    message["tool_calls"] = tool_calls_of(ticket)
                choice["message"] = message
            else:
                choice["text"] = text
            choice["logprobs"] = self._logprobs(index, text_start=0) if self.logprobs else None
            choice["finish_reason"] = self._finish_reason(ticket)
            choices.append(choice)
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head, "object": kind, "choices": choices, "usage": usage_of(self.tickets)}

    async def stream(self, request: Request, *, include_usage: bool) -> AsyncIterator[str]:
        reader = TicketReader(self.tickets)
        sent = [0] * len(self.tickets)  # characters streamed per choice (completion logprobs' text offsets)
        try:
            if self.chat:
                for index in range(len(self.tickets)):
                    yield self._chunk(index, {"role": "assistant", "content": ""}, None)
            while (item := await reader.next(request)) is not None:
                index, delta = item
                ticket = self.tickets[index]
                if delta is not None:
                    yield self._chunk(index, {"content": delta} if self.chat else delta, None, sent[index])
                    sent[index] += len(delta)
                    continue
                if ticket.error is not None:
                    yield f"data: {bytes(failure(ticket.error).body).decode()}\n\n"
                    continue
                if tail := unread_tool_text(ticket):
                    yield self._chunk(index, {"content": tail} if self.chat else tail, None, sent[index])
                    sent[index] += len(tail)
                if ticket.tool_calls:
                    yield self._chunk(index, {"tool_calls": tool_calls_of(ticket)}, None)
                yield self._chunk(index, {} if self.chat else "", self._finish_reason(ticket), sent[index])
            if include_usage:
                payload: dict[str, Any] = {**self._head, "choices": [], "usage": usage_of(self.tickets)}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            reader.cancel()

    def _chunk(self, index: int, delta: dict[str, Any] | str, reason: str | None, text_start: int = 0) -> str:
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        if self.logprobs:
            choice["logprobs"] = self._logprobs(index, text_start)
        choice["finish_reason"] = reason
        payload = {**self._head, "choices": [choice]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    @staticmethod
    def _finish_reason(ticket: ReplyTicket) -> str:
        return finish_reason(ticket.stats.stop_reason) if ticket.stats else "stop"

    def _logprobs(self, index: int, text_start: int) -> dict[str, Any]:
        """The log-probabilities of choice ``index``'s tokens not sent yet (all of them for a whole reply)."""
        entries = self.tickets[index].logprobs
        start, end = self._logprobs_sent[index], len(entries)
        self._logprobs_sent[index] = end
        fresh = entries[start:end]
        if self.chat:
            return {"content": [_chat_logprob(e.chosen, e.top) for e in fresh], "refusal": None}
        offsets, offset = [], text_start
        for entry in fresh:
            offsets.append(offset)
            offset += len(_text(entry.chosen.piece))
        return {
            "tokens": [_text(e.chosen.piece) for e in fresh],
            "token_logprobs": [e.chosen.logprob for e in fresh],
            "top_logprobs": [{_text(p.piece): p.logprob for p in e.top} for e in fresh],
            "text_offset": offsets,
        }


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _chat_logprob(chosen: TokenProb, top: tuple[TokenProb, ...]) -> dict[str, Any]:
    def one(prob: TokenProb) -> dict[str, Any]:
        return {"token": _text(prob.piece), "logprob": prob.logprob, "bytes": list(prob.piece)}

    return {**one(chosen), "top_logprobs": [one(p) for p in top]}


def usage_of(tickets: list[ReplyTicket]) -> dict[str, Any]:
    """OpenAI's usage: the prompt counted once for all choices, with the tokens the engine host reused from its
    prefix cache for it."""
    first = tickets[0].stats
    prompt = first.prompt_tokens if first else 0
    completion = sum(t.stats.generated_tokens for t in tickets if t.stats)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": first.prompt_tokens_cached if first else 0},
    }


def failure(err: BaseException) -> Response:
    if isinstance(err, ContextOverflowError):
        return error(400, str(err), code="context_length_exceeded", param="messages")
    if isinstance(err, DeskError):
        return error(400, str(err))
    return error(500, f"The model failed: {type(err).__name__}: {err}", kind="server_error")
