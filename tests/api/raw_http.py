"""HTTP/1.1 over plain sockets, for tests of what a client with a socket (not an HTTP library) can do."""

from __future__ import annotations

import socket
import time

HOST = "127.0.0.1"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    """A request line and headers; `Host` unless given, `Content-Length` when `length` is given."""
    lines = [f"{method} {path} HTTP/1.1"]
    if not any(h.lower().startswith("host:") for h in headers):
        lines.append("Host: test")
    lines += headers
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    """A complete JSON POST that asks the server to close the connection after answering."""
    return head(
        "POST", path, "Content-Type: application/json", "Connection: close", *headers, length=len(body)
    ) + (body)


def exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data`, read until the server closes the connection; everything the server sent."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes (a reset counts as closed); TimeoutError if it does not."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise TimeoutError(f"still open after {timeout}s; received {received[:200]!r}") from None
        if not chunk:
            return received
        received += chunk


def status(response: bytes) -> int:
    """The status code of a raw response (0 for none)."""
    if not response.startswith(b"HTTP/1.1 "):
        return 0
    return int(response[9:12])


def header_names(response: bytes) -> list[str]:
    head_part = response.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode().lower() for line in head_part.split(b"\r\n")[1:]]


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def drip(sock: socket.socket, data: bytes, interval: float, limit: float) -> float:
    """Send `data` one byte every `interval` s; seconds until the server closed the connection (reading
    whatever it answered), or TimeoutError after `limit` s."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # broken pipe or reset: closed
            return time.monotonic() - start
        sock.settimeout(interval)
        try:
            while sock.recv(65536):
                pass
            return time.monotonic() - start  # EOF
        except ConnectionResetError:
            return time.monotonic() - start
        except TimeoutError:
            pass
        if time.monotonic() - start > limit:
            break
    raise TimeoutError(f"still open after {time.monotonic() - start:.1f}s")
