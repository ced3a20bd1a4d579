"""The load generator's HTTP client: asyncio transports and httptools' response parser, nothing else.

Why not aiohttp: on a 2-core machine the load generator shares a core with the router it measures, and
aiohttp spends ~150 µs of that core to send a request and ~15 µs per streamed event; a burst of 64 requests
kept the router off its core for ~10 ms before it saw the first one. Here a request is prebuilt bytes written
on an open keep-alive connection, and an event is a split on b"\\n\\n" in the parser's body callback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time. Each body chunk is split into SSE events,
    timed as it arrives, and handed to `on_event(arrived, event)`."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._on_event: Callable[[float, bytes], None] | None = None
        self._done: asyncio.Future[int] | None = None
        self._pending = b""

    def request(self, data: bytes, on_event: Callable[[float, bytes], None]) -> asyncio.Future[int]:
        """Send `data`; the future resolves to the status code once the whole response has arrived."""
        assert self.transport is not None and self._done is None, "one request at a time"
        self._on_event, self._pending = on_event, b""
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._done

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError(f"connection closed mid-response: {exc}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        arrived = time.perf_counter()
        *events, self._pending = (self._pending + body).split(b"\n\n")
        for event in events:
            self._on_event(arrived, event)

    def on_message_complete(self) -> None:
        done, self._done = self._done, None
        if self._pending:
            self._on_event(time.perf_counter(), self._pending)
        if done is not None and not done.done():
            done.set_result(self.parser.get_status_code())


class SSEClient:
    """A pool of keep-alive connections to one server, for JSON POSTs answered with a stream of events."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    async def open(self, count: int) -> None:
        """Open `count` connections ahead of time (clients that send more than one request keep theirs)."""
        connections = await asyncio.gather(*(self._connect() for _ in range(count)))
        self._idle.extend(connections)

    async def post(self, path: str, body: dict, on_event: Callable[[float, bytes], None]) -> int:
        """POST `body` as JSON; every event of the response goes to `on_event(arrived, event)`. The status."""
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        connection = await self._take()
        try:
            status = await connection.request(head + payload, on_event)
        except BaseException:
            connection.transport.close()  # a half-read response leaves the connection unusable
            raise
        self._idle.append(connection)
        return status

    async def close(self) -> None:
        for connection in self._all:
            connection.transport.close()
        self._all.clear()
        self._idle.clear()

    async def __aenter__(self) -> SSEClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:  # the server closes connections idle past its keep-alive timeout
                return connection
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        self._all.append(connection)
        return connection
