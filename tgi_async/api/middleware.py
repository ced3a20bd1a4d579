"""ASGI middleware with the behaviour of TGI's tower layers: CORS, API key, request body limit; and one of
ours that hands the memory of large requests back to the OS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgi_async.api.body import PAYLOAD_TOO_LARGE, BodyRejection
from tgi_async.memory import release_freed_memory

# Paths TGI puts behind --api-key (its `base_routes`, router/src/server.rs); /chat_tokenize, /health, /info,
# /metrics and /v1/models stay open. axum layers a path's 405 fallback too, so a wrong method on these paths
# needs the key as well, except on `/`, whose fallback is that of the open `GET /`.
PROTECTED_PATHS = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/v1/chat/completions",
        "/v1/completions",
        "/vertex",
        "/invocations",
        "/tokenize",
    }
)
_VARY = b"origin, access-control-request-method, access-control-request-headers"


async def _send_empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


class Cors:
    """tower-http's CorsLayer as TGI configures it: methods GET, POST; header content-type.

    With no origins configured every response carries `access-control-allow-origin: *`; with a list, the
    request's Origin is echoed when listed. Every OPTIONS request is answered as a preflight (200, empty).
    """

    def __init__(self, app: ASGIApp, allow_origins: Iterable[str] = ()):
        self.app = app
        self.allow_origins = frozenset(o.encode() for o in allow_origins)

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        headers = []
        if not self.allow_origins:
            headers.append((b"access-control-allow-origin", b"*"))
        elif origin is not None and origin in self.allow_origins:
            headers.append((b"access-control-allow-origin", origin))
        headers.append((b"vary", _VARY))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cors = self._headers(scope)
        if scope["method"] == "OPTIONS":
            preflight = [
                (b"access-control-allow-methods", b"GET,POST"),
                (b"access-control-allow-headers", b"content-type"),
            ]
            await _send_empty(send, 200, cors + preflight)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in cors if name != b"vary"}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + cors}
            await send(message)

        await self.app(scope, receive, send_with_cors)


class ApiKey:
    """`--api-key`: generation routes need `Authorization: Bearer KEY` (compared case-insensitively, as
    TGI does); anything else gets 401 with an empty body."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self.expected = f"Bearer {api_key}".lower() if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is not None
            and scope["type"] == "http"
            and scope["path"] in PROTECTED_PATHS
            and (scope["method"] == "POST" or scope["path"] != "/")
        ):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                ok = given is not None and given.decode("ascii").lower() == self.expected
            except UnicodeDecodeError:
                ok = False
            if not ok:
                await _send_empty(send, 401, [])
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Axum's DefaultBodyLimit: a route that reads more than `limit` body bytes fails with 413.

    The check happens as the body is read (so a route's content-type check still comes first, as in
    axum); a Content-Length over the limit fails at the first read without waiting for the bytes.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        too_large = declared is not None and declared.isdigit() and int(declared) > self.limit
        seen = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()
            if too_large:
                raise BodyRejection(413, PAYLOAD_TOO_LARGE)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyRejection(413, PAYLOAD_TOO_LARGE)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class ReleaseMemoryAfterLargeBodies:
    """After a request whose body had `threshold` bytes or more, return freed memory to the OS.

    NOTE: glibc keeps what a large request freed (its body, the strings parsed from it, a large answer)
    for reuse; a few 1 MB requests left the router's RSS 400 MB above its start. `malloc_trim` runs in a
    thread (ctypes drops the GIL), one at a time; requests finishing meanwhile need no second one.
    """

    def __init__(self, app: ASGIApp, threshold: int):
        self.app = app
        self.threshold = threshold
        self._trimming: asyncio.Future[bool] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            if seen >= self.threshold and (self._trimming is None or self._trimming.done()):
                self._trimming = asyncio.get_running_loop().run_in_executor(None, release_freed_memory)
