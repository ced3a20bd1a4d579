"""SSE framing bytes (axum's `Sse`), keep-alive comments and in-stream errors."""

from __future__ import annotations

import asyncio

from tgi_async.api import protocol as p
from tgi_async.api.sse import KEEP_ALIVE, SSE_HEADERS, sse_data, sse_error, sse_event, with_keep_alive
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


async def test_keep_alive_fills_silences_and_closes_the_source():
    closed = asyncio.Event()

    async def slow():
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(0.25)
            yield b"data: 2\n\n"
        finally:
            closed.set()

    chunks = [chunk async for chunk in with_keep_alive(slow(), interval_s=0.1)]
    assert chunks[0] == b"data: 1\n\n" and chunks[-1] == b"data: 2\n\n"
    assert chunks[1:-1] == [KEEP_ALIVE, KEEP_ALIVE]
    assert closed.is_set()


async def test_closing_the_stream_cancels_a_pending_source():
    cancelled = asyncio.Event()

    async def never():
        try:
            await asyncio.sleep(3600)
            yield b""
        finally:
            cancelled.set()

    stream = with_keep_alive(never(), interval_s=0.05)
    assert await anext(stream) == KEEP_ALIVE
    await stream.aclose()
    assert cancelled.is_set()
