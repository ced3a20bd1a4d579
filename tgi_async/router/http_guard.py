"""uvicorn's httptools protocol with the read limits uvicorn (0.54) does not have.

uvicorn closes a connection only when it idles after a response (`timeout_keep_alive`, 5 s): a client that
sends its headers a byte at a time, never sends a byte, or sends a body shorter than its Content-Length holds
the connection (and a file descriptor) for good, and httptools buffers a request head of any size.
`GuardedHttpToolsProtocol.bound(limits)` is uvicorn's protocol plus, per `HttpLimits`:

- header timeout: the request line and headers within S s of the connection opening, or of the first byte of
  the next request on a kept-alive connection; else the connection is closed (no answer, as hyper does);
- body timeout: the whole body within S s of the end of the headers; else 408 when no response has started,
  and the connection is closed;
- silent connections: at most N open without having sent a byte; past it the oldest is closed;
- head size: a request line and headers over `max_head_bytes` get 431 and a close.

A deadline counts only while the client is the one awaited; one that expires otherwise starts again: a head
waits while a response is in progress on the connection (pipelining), a body while its request waits its turn
or the app has not taken what came. Nothing is awaited from the client while its response is produced, so a
long stream is never cut. Each cut is one log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tgi_async.router.http_limits import HttpLimits

log = logging.getLogger(__name__)
Awaiting = Literal["head", "body"]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()
    # connections that have not sent a byte, oldest first; one registry per server (see `bound`)
    silent: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}

    @classmethod
    def bound(cls, limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
        """The protocol class for one server (`uvicorn.Config(http=...)`): `limits`, its own registry."""
        return type(cls.__name__, (cls,), {"limits": limits, "silent": {}})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting: Awaiting | None = None  # what the client still owes; kept by the parser's callbacks
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: Awaiting | None = None
        self._head_bytes = 0
        self._spoke = False  # any byte received (a silent connection's close is routine, a slow one's not)

    # ---- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._awaiting = "head"
        self._follow()
        cap = self.limits.max_silent_connections
        if cap:
            self.silent[self] = None
            if len(self.silent) > cap:
                oldest = next(iter(self.silent))
                del self.silent[oldest]
                log.debug("closed the oldest of %d connections that sent nothing", cap)
                oldest.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._spoke:
            self._spoke = True
            self.silent.pop(self, None)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._awaiting == "head":
            # NOTE: counted per read, so a read that ends a pipelined body and starts the next head counts
            # whole; the bound on memory is what matters (httptools keeps a head until it ends).
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                idle = self.cycle is None or self.cycle.response_complete
                self._cut(431 if idle else None, f"request head over {self.limits.max_head_bytes} bytes")
                return
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.silent.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    # ---- httptools parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting = "head"

    def on_headers_complete(self) -> None:
        self._awaiting = "body"
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting = None
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and not self.pipeline
            and self.timeout_keep_alive_task is None
        ):
            # NOTE: answered before its body ended (401, 413, 415): uvicorn armed keep-alive at the response,
            # and the rest of the body disarmed it; an idle connection must still close.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _unsupported_upgrade_warning(self) -> None:
        # NOTE: uvicorn logs two warnings for every such request, which any client can send in a loop.
        log.debug("websocket upgrade requested: not served here")

    # ---- deadlines ----------------------------------------------------------------------------------

    def _timeout(self, awaiting: Awaiting | None) -> float:
        if awaiting == "head":
            return self.limits.header_timeout
        if awaiting == "body":
            return self.limits.body_timeout
        return 0.0

    def _follow(self) -> None:
        """One deadline, for what the client owes now (checked after each read: no timer per request that
        arrives in one read)."""
        if self._deadline_for == self._awaiting:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = self._awaiting
        timeout = self._timeout(self._awaiting)
        if timeout > 0:
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        timeout = self._timeout(self._deadline_for)
        if not self._client_is_late():
            self._deadline = self.loop.call_later(timeout, self._expired)
            return
        if self._deadline_for == "body":
            started = self.cycle is not None and self.cycle.response_started
            self._cut(None if started else 408, f"request body incomplete after {timeout:g}s")
        elif self._spoke:
            self._cut(None, f"request headers incomplete after {timeout:g}s")
        else:
            log.debug("closed a connection that sent nothing for %gs", timeout)
            self.transport.close()

    def _client_is_late(self) -> bool:
        """Whether the client, not the server, is the one the connection waits for."""
        if self._deadline_for == "head":
            # NOTE: a pipelined request's head may wait for the responses before it
            return self.cycle is None or self.cycle.response_complete
        # NOTE: uvicorn stops reading while a body's request waits its turn, or while the app has not taken
        # what came (and an earlier request's receive() may resume it: so not read_paused alone)
        return not self.pipeline and not self.flow.read_paused

    def _cut(self, status: int | None, reason: str) -> None:
        """Close the connection, answering `status` first when given; a running app sees the client leave."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # NOTE: uvicorn then writes nothing more the app sends
            cycle.message_event.set()
        if status is not None:
            head = [STATUS_LINE[status]]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head.append(b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.write(b"".join(head))
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("%s: %s", reason, status or "closed", extra={"client": client})
        self.transport.close()
