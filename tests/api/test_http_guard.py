"""The router's HTTP protocol (router/http_guard.py) on a plain ASGI app, in process: what its deadlines must
not cut (slow apps, long streams, pipelined requests waiting their turn, bodies in pieces) and the idle
connection uvicorn leaves without a timer."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send

from tests.api.local_server import serve
from tests.api.raw_http import head, port_of, read_until_closed, status
from tgi_async.launcher.processes import tgi_async_command
from tgi_async.router.http_guard import GuardedHttpToolsProtocol
from tgi_async.router.http_limits import HttpLimits

TIMEOUT = 0.5  # header and body
SLOW = 3 * TIMEOUT  # what the app takes: longer than any deadline
KEEP_ALIVE = 1
SLACK = 1.5


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/early answers 415 unread; /stream sends 4 chunks over SLOW s; anything else reads its body, waits
    SLOW s on /slow, and answers the body's length."""
    assert scope["type"] == "http"
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 415, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4):
            await asyncio.sleep(SLOW / 4)
            await send({"type": "http.response.body", "body": b"chunk;", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    length, more = 0, True
    while more:
        message = await receive()
        length += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW)
    body = str(length).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    limits = HttpLimits(header_timeout=TIMEOUT, body_timeout=TIMEOUT, max_silent_connections=8)
    for url in serve(
        app,
        http=GuardedHttpToolsProtocol.bound(limits),
        ws="none",
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE,
        log_config=None,  # as the router: uvicorn's records reach the root logger (and caplog)
    ):
        yield port_of(url)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def responses(data: bytes) -> list[int]:
    return [status(b"HTTP/1.1 " + part) for part in data.split(b"HTTP/1.1 ")[1:]]


def test_slow_answers_and_long_streams_are_not_cut(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/slow", "Connection: close", length=3) + b"abc")
        answer = read_until_closed(sock, SLOW + SLACK)
    assert responses(answer) == [200] and answer.endswith(b"\r\n\r\n3")
    with connect(port) as sock:
        sock.sendall(head("GET", "/stream", "Connection: close"))
        answer = read_until_closed(sock, SLOW + SLACK)
    assert answer.count(b"chunk;") == 4 and answer.endswith(b"0\r\n\r\n")


def test_pipelined_requests_are_not_cut_while_they_wait(port):
    """Two requests behind a slow one, the last one's head unfinished: uvicorn stops reading while the slow
    one runs, so no deadline counts then; the unfinished head is cut once reading resumes."""
    with connect(port) as sock:
        started = time.monotonic()
        sock.sendall(head("GET", "/slow") + head("GET", "/fast") + b"GET /fast HTTP/1.1\r\nHost: te")
        answer = read_until_closed(sock, SLOW + TIMEOUT + SLACK)
        lived = time.monotonic() - started
    assert responses(answer) == [200, 200]
    assert SLOW <= lived <= SLOW + TIMEOUT + SLACK


def test_a_body_sent_in_pieces_within_the_deadline_is_read(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/echo", "Connection: close", length=30))
        for _ in range(3):
            time.sleep(TIMEOUT / 5)
            sock.sendall(b"x" * 10)
        answer = read_until_closed(sock, SLACK)
    assert responses(answer) == [200] and answer.endswith(b"30")


def test_a_connection_idle_after_an_early_answer_still_closes(port):
    """Answered before its body ended, the rest of the body then sent: uvicorn's keep-alive timer was armed
    at the answer and disarmed by those bytes; the idle connection must close all the same."""
    with connect(port) as sock:
        sock.sendall(head("POST", "/early", length=10) + b"01234")
        time.sleep(0.2)
        sock.sendall(b"56789")
        started = time.monotonic()
        answer = read_until_closed(sock, KEEP_ALIVE + SLACK)
        lived = time.monotonic() - started
    assert responses(answer) == [415] and lived >= KEEP_ALIVE - 0.3


def test_websocket_upgrade_requests_log_no_warning(port, caplog):
    upgrade = head("GET", "/echo", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13")
    with caplog.at_level(logging.INFO), connect(port) as sock:
        for _ in range(3):
            sock.sendall(upgrade)
            assert status(sock.recv(65536)) == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


def test_negative_limits_are_refused():
    argv = tgi_async_command("router", "--http-body-timeout", "-1")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "must be >= 0" in done.stdout  # logs go to stdout, as TGI's
