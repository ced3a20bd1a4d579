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
    """`events`, plus `KEEP_ALIVE` whenever `interval_s` pass without one. Closes `events` when closed."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield KEEP_ALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(
    events: AsyncIterator[bytes],
    headers: Mapping[str, str] | None = None,
    keep_alive_s: float = KEEP_ALIVE_INTERVAL_S,
) -> StreamingResponse:
    """A 200 `text/event-stream` response; the client leaving cancels and closes `events`."""
    return StreamingResponse(
        with_keep_alive(events, keep_alive_s), headers={**(headers or {}), **SSE_HEADERS}
    )
