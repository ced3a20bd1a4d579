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
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

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


class SSEResponse(StreamingResponse):
    """A 200 `text/event-stream` response of `events`, with keep-alives; the client leaving closes `events`.

    NOTE: not Starlette's own `__call__`: it runs each stream in an anyio task group and ends every stream
    with an extra empty write. Here one task pulls `events` into a mailbox, one waits for the client to
    leave, and a timer fires only when a stream has been silent: nothing is created per event. The last event
    goes out in the same write as the end of the body (one syscall and one client wake-up less per stream).
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        keep_alive_s: float = KEEP_ALIVE_INTERVAL_S,
    ):
        super().__init__(events, headers={**(headers or {}), **SSE_HEADERS})
        self.keep_alive_s = keep_alive_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        mailbox = _Mailbox(loop)
        producer = asyncio.ensure_future(_pull(self.body_iterator, mailbox))
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(lambda _: mailbox.put(_GONE))

        def tick() -> None:
            nonlocal timer
            silent = loop.time() - mailbox.last_put
            if silent >= self.keep_alive_s:
                mailbox.put(KEEP_ALIVE)
                silent = 0.0
            timer = loop.call_later(self.keep_alive_s - silent, tick)

        timer = loop.call_later(self.keep_alive_s, tick)
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            while True:
                item = await mailbox.get()
                if item is _GONE:
                    return
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                last = mailbox.ends_cleanly()
                await send({"type": "http.response.body", "body": item, "more_body": not last})
                if last:
                    return
        finally:
            timer.cancel()
            watcher.cancel()
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


@dataclass(frozen=True, slots=True)
class _End:
    """The source is exhausted (`error` None) or failed."""

    error: Exception | None


_GONE = object()  # the client disconnected


class _Mailbox:
    """What a stream's producer, disconnect watcher and keep-alive timer hand to its writer, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._items: deque[bytes | _End | object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop
        self.last_put = loop.time()

    def put(self, item: bytes | _End | object) -> None:
        self._items.append(item)
        self.last_put = self._loop.time()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes | _End | object:
        while not self._items:
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._items.popleft()

    def ends_cleanly(self) -> bool:
        """The next item is the source's clean end: the item just taken is the last event."""
        return bool(self._items) and isinstance(self._items[0], _End) and self._items[0].error is None


async def _pull(events: AsyncIterator[bytes], mailbox: _Mailbox) -> None:
    try:
        async for chunk in events:
            mailbox.put(chunk)
    except Exception as exc:
        mailbox.put(_End(exc))
    else:
        mailbox.put(_End(None))


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
