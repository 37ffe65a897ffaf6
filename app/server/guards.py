"""What every request passes before an endpoint sees it (pure ASGI, in front of FastAPI):

- the Host header must name this machine unless the server binds elsewhere (a web page cannot reach a
  key-less local server through DNS rebinding);
- the API key, compared in constant time;
- the body is read here, up to a limit that holds for chunked bodies too (no Content-Length), then handed on;
- CORS answers only for the origins the user allowed (none by default);
- a POST body is read as JSON whatever its Content-Type says (``curl -d`` says form data).

Every refusal is an OpenAI-shaped JSON error.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
OPEN_PATHS = ("/health",)  # answered without the key (says nothing but whether the model serves)


def error_body(
    message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> bytes:
    """OpenAI's error shape."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


async def send_error(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def host_name(header: str) -> str:
    """``localhost`` from ``localhost:8080``, ``::1`` from ``[::1]:8080``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class RequestGuard:
    """The checks above, in that order, around ``app``.

    ``allowed_hosts``: host names accepted in the Host header (None: any, when the server binds to a public
    address and the user decided who may reach it); ``cors_origins``: browser origins allowed to call the API.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES,
        cors_origins: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts
        self.cors_origins = cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        cors = self._cors_headers(headers.get("origin"))
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            await send_error(
                send,
                400,
                error_body(
                    f"This server answers requests for {', '.join(self.allowed_hosts)} only (the Host header said "
                    f"{headers.get('host', 'nothing')!r}). Start it with --host to serve other names.",
                    code="host_not_allowed",
                ),
            )
            return
        if scope["method"] == "OPTIONS" and cors:  # a browser's preflight
            await send({"type": "http.response.start", "status": 204, "headers": cors})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._key_ok(headers.get("authorization", "")):
            await send_error(
                send,
                401,
                error_body(
                    "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error",
                    code="invalid_api_key",
                ),
                cors,
            )
            return
        body = await self._read_body(receive)
        if body is None:
            await send_error(
                send,
                413,
                error_body(f"The request body is larger than {self.max_body_bytes} bytes.", code="body_too_large"),
                cors,
            )
            return
        if scope["method"] == "POST":  # every body here is JSON, whatever it says (curl -d says form data)
            others = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*others, (b"content-type", b"application/json")]}
        await self.app(scope, self._replay(body, receive), self._with_headers(send, cors))

    def _key_ok(self, authorization: str) -> bool:
        assert self.api_key is not None
        scheme, _, supplied = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), self.api_key)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (Content-Length or not)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending it all
                return b"".join(parts)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The body once, then the client's own messages (so a disconnect is still seen)."""
        given = False

        async def replayed() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replayed

    def _cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if not origin or not (origin in self.cors_origins or "*" in self.cors_origins):
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-headers", b"authorization, content-type"),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"vary", b"origin"),
        ]

    @staticmethod
    def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
        if not extra:
            return send

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return sending
