"""The hang report names where a stuck request waits: a server that reads a request and never answers."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx

from integration_tests.hang_report import client_report, tcp_report


async def test_a_request_the_server_never_reads_shows_in_the_client_and_the_sockets() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            waiting = asyncio.ensure_future(client.post(f"http://127.0.0.1:{port}/generate", json={"x": 1}))
            await asyncio.sleep(0.5)  # connected (the kernel accepts), sent, never read: no answer comes
            assert not waiting.done()
            client_side = client_report({waiting}, client)
            sockets = tcp_report(port)
            waiting.cancel()
    finally:
        listener.close()
    assert "1 asyncio tasks, 1 distinct" in client_side
    assert "in _receive_event" in client_side  # awaits the response, not a connection from the pool
    assert "0 requests queued; connections: {\"'http://127.0.0.1:" in client_side
    assert "', HTTP/1.1, ACTIVE, Request Count: 1\": 1}" in client_side
    # its socket is watched at every layer (a request stuck with one of these off would never be read)
    assert re.search(r"fd \d+: transport reading=True .* selector events=1, epoll events=\w+", client_side)
    assert "server LISTEN: 1 sockets, 0 bytes unacknowledged, 1 unread" in sockets  # never accepted
    assert "client ESTABLISHED: 1 sockets" in sockets
