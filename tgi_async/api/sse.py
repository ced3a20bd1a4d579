"""Server-sent events exactly as axum's `Sse` writes them in TGI's router.

An event is `data: <compact json>\\n\\n`; JSON never contains a raw newline (serde escapes them, and axum
drops any CR/LF from JSON data). When no event was sent for 15 s a keep-alive comment `:\\n\\n` goes out
(axum's `KeepAlive::default()`). Errors inside a stream are ordinary events `{"error", "error_type"}`: the
HTTP status is already 200 by then. Response headers: `content-type: text/event-stream`,
`cache-control: no-cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from tgi_async.api.errors import error_body
from tgi_async.api.protocol import to_json
from tgi_async.scheduler.request import InferError

KEEP_ALIVE = b":\n\n"
KEEP_ALIVE_INTERVAL_S = 15.0
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def sse_event(payload: BaseModel | bytes) -> bytes:
    """One `data:` event holding `payload` as compact JSON (a model, or JSON bytes already made)."""
    data = to_json(payload) if isinstance(payload, BaseModel) else payload
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b"").replace(b"\n", b"")
    return b"data: " + data + b"\n\n"


def sse_data(text: str) -> bytes:
    """An event with raw text data (e.g. `[DONE]`); each line of `text` becomes its own `data:` field."""
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


def sse_error(error: InferError) -> bytes:
    """An error event inside a stream: `{"error", "error_type"}` (TGI's `From<InferError> for Event`)."""
    return sse_event(error_body(error))


async def with_keep_alive(
    events: AsyncIterator[bytes], interval_s: float = KEEP_ALIVE_INTERVAL_S
) -> AsyncIterator[bytes]:
    """`events`, plus `KEEP_ALIVE` whenever `interval_s` pass without one. Closes `events` when closed.

    NOTE: a task pulls `events` into a queue and one timer per stream fires only when it has been silent:
    nothing is created per event (a wait with a timeout per event cost ~10 % of the router's CPU)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
    last = loop.time()

    async def pull() -> None:
        nonlocal last
        try:
            async for chunk in events:
                last = loop.time()
                queue.put_nowait(chunk)
        except Exception as exc:
            queue.put_nowait(_End(exc))
        else:
            queue.put_nowait(_End(None))

    def tick() -> None:
        nonlocal last, timer
        silent = loop.time() - last
        if silent >= interval_s:
            queue.put_nowait(KEEP_ALIVE)
            last, silent = loop.time(), 0.0
        timer = loop.call_later(interval_s - silent, tick)

    producer = asyncio.ensure_future(pull())
    timer = loop.call_later(interval_s, tick)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        timer.cancel()
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(frozen=True, slots=True)
class _End:
    """The source is exhausted (`error` None) or failed."""

    error: Exception | None


def sse_response(
    events: AsyncIterator[bytes],
    headers: Mapping[str, str] | None = None,
    keep_alive_s: float = KEEP_ALIVE_INTERVAL_S,
) -> StreamingResponse:
    """A 200 `text/event-stream` response; the client leaving cancels and closes `events`."""
    return StreamingResponse(
        with_keep_alive(events, keep_alive_s), headers={**(headers or {}), **SSE_HEADERS}
    )
