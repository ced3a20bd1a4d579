"""How long, and how much, the router's HTTP server reads from one client (see http_guard.py)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_SILENT_CONNECTIONS = 256
# NOTE: hyper's default read buffer (TGI's HTTP server): a longer request line and headers get 431 there too.
MAX_HEAD_BYTES = 8192 + 4096 * 100


@dataclass(frozen=True, slots=True)
class HttpLimits:
    # seconds from a connection's opening (or a kept-alive connection's next request's first byte) to the
    # end of the request's headers; 0: no limit
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    # seconds from the end of the headers to the end of the body; 0: no limit
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    # connections open without having sent a byte; past it the oldest is closed; 0: no limit
    max_silent_connections: int = DEFAULT_MAX_SILENT_CONNECTIONS
    # bytes of request line and headers
    max_head_bytes: int = MAX_HEAD_BYTES
