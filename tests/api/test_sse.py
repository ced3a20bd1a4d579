"""SSE framing bytes (axum's `Sse`), in-stream errors, and SSEResponse over a real server: keep-alive
comments, the end of the body, a client leaving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.api.local_server import serve
from tgi_async.api import protocol as p
from tgi_async.api.sse import KEEP_ALIVE, SSE_HEADERS, SSEResponse, sse_data, sse_error, sse_event
from tgi_async.scheduler.request import InferError


def test_event_bytes():
    event = p.StreamResponse(index=1, token=p.Token(id=5, text="a\nb", logprob=-0.5, special=False))
    assert sse_event(event) == (
        b'data: {"index":1,"token":{"id":5,"text":"a\\nb","logprob":-0.5,"special":false},'
        b'"generated_text":null,"details":null}\n\n'
    )
    assert sse_event(b'{"a":\n1}') == b'data: {"a":1}\n\n'  # raw newlines never split an event


def test_data_and_error_events():
    assert sse_data("[DONE]") == b"data: [DONE]\n\n"
    assert sse_data("a\nb") == b"data: a\ndata: b\n\n"
    assert sse_error(InferError("boom", "generation")) == (
        b'data: {"error":"Request failed during generation: boom","error_type":"generation"}\n\n'
    )
    assert KEEP_ALIVE == b":\n\n"
    assert SSE_HEADERS == {"content-type": "text/event-stream", "cache-control": "no-cache"}


class SourceLog:
    """What the server-side event source saw, readable from the test thread."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.cancelled = threading.Event()
        self.body_messages: list[tuple[bytes, bool]] = []  # (body, more_body) as the app sent them


def sse_app(log: SourceLog) -> Starlette:
    """/pause: two events 0.25 s apart (keep-alives every 0.1 s between); /forever: silent until closed."""

    async def pause() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(0.25)
            yield b"data: 2\n\n"
        finally:
            log.closed.set()

    async def forever() -> AsyncIterator[bytes]:
        try:
            await asyncio.sleep(3600)
            yield b""
        except asyncio.CancelledError:
            log.cancelled.set()
            raise
        finally:
            log.closed.set()

    async def endpoint(request: Request) -> SSEResponse:
        source = pause() if request.url.path == "/pause" else forever()
        return SSEResponse(source, keep_alive_s=0.1)

    app = Starlette(routes=[Route("/pause", endpoint), Route("/forever", endpoint)])

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.body":
                log.body_messages.append((message.get("body", b""), message.get("more_body", False)))
            await send(message)

        await app(scope, receive, send_and_record)

    return recording  # type: ignore[return-value]


@pytest.fixture
def sse_server() -> Iterator[tuple[str, SourceLog]]:
    log = SourceLog()
    yield from ((url, log) for url in serve(sse_app(log)))


def test_keep_alive_fills_silences_and_the_last_event_ends_the_body(sse_server):
    url, log = sse_server
    with httpx.Client(base_url=url, timeout=10) as http:
        response = http.get("/pause")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == b"data: 1\n\n" + KEEP_ALIVE * 2 + b"data: 2\n\n"
    assert log.closed.wait(5)
    # the last event and the end of the body share one write: no empty message after it
    assert log.body_messages[-1] == (b"data: 2\n\n", False)
    assert [more for _, more in log.body_messages[:-1]] == [True] * 3


def test_a_client_leaving_a_silent_stream_cancels_its_source(sse_server):
    url, log = sse_server
    with httpx.Client(base_url=url, timeout=10) as http, http.stream("GET", "/forever") as response:
        first = next(response.iter_bytes())
        assert first == KEEP_ALIVE
    # the connection is closed while the source waits: it is cancelled and closed, without another event
    assert log.cancelled.wait(5) and log.closed.wait(5)
