"""What a public endpoint meets from clients with raw sockets: slow or silent connections, short bodies,
Host-echoing redirects, deeply nested JSON, clients leaving mid-body. A real router, its log read after.

One router (strict shard, `--simulate test`: no model needed) per scheduler, with short timeouts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.raw_http import (
    body_of,
    drip,
    exchange,
    head,
    header_names,
    port_of,
    post,
    read_until_closed,
    status,
)
from tgi_async.launcher.processes import start_bundled_shard, start_router

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_SILENT = 50
SLACK = 1.5  # seconds: a deadline's callback on a loaded 2-core machine
FLAGS = (
    "--http-header-timeout",
    str(HEADER_TIMEOUT),
    "--http-body-timeout",
    str(BODY_TIMEOUT),
    "--http-max-silent-connections",
    str(MAX_SILENT),
)
POST_ROUTES = (
    "/",
    "/generate",
    "/generate_stream",
    "/invocations",
    "/vertex",
    "/tokenize",
    "/v1/chat/completions",
    "/v1/completions",
    "/chat_tokenize",
)


@dataclass
class Router:
    url: str
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def router(tiny_model_dir: Path, scheduler_name: str) -> Iterator[Router]:
    shard, socket_path = start_bundled_shard(tiny_model_dir, "--simulate", "test")
    child, url = start_router(tiny_model_dir, socket_path, "--scheduler", scheduler_name, *FLAGS)
    assert child.log_path is not None
    yield Router(url, port_of(url), child.log_path)
    child.stop()
    shard.stop()


def assert_quiet(router: Router, since: int) -> None:
    """No traceback and no error line in the router's log after offset `since`, but the one line TGI logs
    at ERROR for a request it refused (request_log.py: the request's own error, e.g. an invalid grammar)."""
    logged = router.log_text()[since:]
    assert "Traceback" not in logged, logged[-3000:]
    errors = [line for line in logged.splitlines() if " ERROR " in line and "request_log.py" not in line]
    assert not errors, errors[-3:]


def assert_serving(router: Router) -> None:
    r = httpx.post(router.url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200, r.text


# ---- redirects -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        post("/generate/", b"{}", "Host: evil.example"),
        head("GET", "/health/", "Host: evil.example", "Connection: close"),
        head("GET", "/info/", "Host: evil.example", "Connection: close"),
    ],
    ids=["post-generate", "get-health", "get-info"],
)
def test_trailing_slash_is_tgis_404_without_location(router, request_head):
    response = exchange(router.port, request_head)
    assert (status(response), body_of(response)) == (404, b"")
    assert "location" not in header_names(response)


# ---- deeply nested JSON --------------------------------------------------------------------------------


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def deep_bodies(path: str, deep: str) -> list[str]:
    """`deep` at the top and in the fields where each route takes a list or any JSON value (at `@`)."""
    if path in ("/v1/chat/completions", "/chat_tokenize"):
        tools = '[{"type":"function","function":{"name":"f","parameters":@}}]'
        templates = [
            '{"model":"tgi","messages":@}',
            '{"model":"tgi","messages":[{"role":"user","content":"hi"}],"tools":' + tools + "}",
        ]
    elif path == "/v1/completions":
        templates = ['{"model":"tgi","prompt":@}']
    elif path == "/vertex":
        templates = ['{"instances":@}']
    else:
        templates = ['{"inputs":@}', '{"inputs":"a","parameters":{"grammar":{"type":"json","value":@}}}']
    return [deep] + [t.replace("@", deep) for t in templates]


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_json_is_a_4xx_without_traceback(router, path, depth):
    since = len(router.log_text())
    for deep in (nested_list(depth), nested_object(depth)):
        for body in deep_bodies(path, deep):
            response = exchange(router.port, post(path, body.encode()))
            assert 400 <= status(response) < 500, (path, body[:80], response[:300])
    assert_quiet(router, since)
    assert_serving(router)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_nesting_under_the_parsers_limit_is_no_500(router, path):
    """150 levels parse (the limit is 200, serde's 128): what the routes do with them must not fail."""
    since = len(router.log_text())
    for deep in (nested_list(150), nested_object(150)):
        for body in deep_bodies(path, deep):
            response = exchange(router.port, post(path, body.encode()))
            assert 200 <= status(response) < 500, (path, body[:80], response[:300])
    assert_quiet(router, since)


def test_deep_json_answers_as_malformed_json_does(router):
    """/invocations answers like /generate: 400, axum's plain-text rejection with the parser's reason."""
    body = b'{"inputs":' + nested_list(1_000).encode() + b"}"
    generate = exchange(router.port, post("/generate", body))
    invocations = exchange(router.port, post("/invocations", body))
    assert status(generate) == status(invocations) == 400
    assert body_of(generate) == body_of(invocations)
    assert body_of(invocations).startswith(b"Failed to parse the request body as JSON: recursion limit")


# ---- clients that leave -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", POST_ROUTES)
def test_client_leaving_mid_body_logs_no_traceback(router, path):
    since = len(router.log_text())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.sendall(head("POST", path, "Content-Type: application/json", length=1000) + b'{"inputs": "')
            time.sleep(0.1)  # the route is reading the body when the client leaves
    time.sleep(0.3)
    assert_quiet(router, since)
    assert_serving(router)
    logged = router.log_text()[since:]
    assert len(logged.splitlines()) <= 3, logged  # one concise line per client at most


def test_bodies_still_parse_after_all_this(router):
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 2}}).encode()
    for path in ("/generate", "/invocations", "/"):
        assert status(exchange(router.port, post(path, body))) == 200


# ---- slow, silent and short clients ------------------------------------------------------------------------


def test_slow_headers_are_cut_at_the_header_timeout(router):
    slow = head("GET", "/health", "X-Padding: " + "a" * 100)
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        lived = drip(sock, slow, interval=1.0, limit=HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.5 <= lived <= HEADER_TIMEOUT + SLACK
    # the next request on a kept-alive connection has the same deadline from its first byte
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(head("GET", "/health"))
        assert status(sock.recv(65536)) == 200
        lived = drip(sock, slow, interval=1.0, limit=HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.5 <= lived <= HEADER_TIMEOUT + SLACK
    assert_serving(router)


async def test_silent_connections_are_closed_while_the_server_serves(router):
    async def lifetime() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        opened = time.monotonic()
        try:
            assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + SLACK + 5) == b""
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        return time.monotonic() - opened

    async def serve_meanwhile(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for _ in range(int(HEADER_TIMEOUT / 0.25)):
            r = await client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
            statuses.append(r.status_code)
            await asyncio.sleep(0.25)
        return statuses

    silent = [asyncio.ensure_future(lifetime()) for _ in range(200)]
    await asyncio.sleep(0.5)  # all connected
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        statuses = await serve_meanwhile(client)
    lifetimes = await asyncio.gather(*silent)
    assert set(statuses) == {200}
    assert max(lifetimes) <= HEADER_TIMEOUT + SLACK
    # past the cap the oldest go at once, the rest at the header timeout
    assert sum(t < HEADER_TIMEOUT / 2 for t in lifetimes) >= 200 - MAX_SILENT


@pytest.mark.parametrize("path", ["/generate", "/invocations", "/v1/chat/completions"])
def test_a_short_body_gets_408_at_the_body_timeout(router, path):
    since = len(router.log_text())
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(head("POST", path, "Content-Type: application/json", length=100) + b'{"inputs": "')
        started = time.monotonic()
        response = read_until_closed(sock, BODY_TIMEOUT + SLACK)
        lived = time.monotonic() - started
    assert status(response) == 408 and lived >= BODY_TIMEOUT - 0.5
    # a body trickling in is cut too: the deadline is for the whole body, not between reads
    body = b'{"inputs": "' + b"a" * 100 + b'"}'
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(head("POST", path, "Content-Type: application/json", length=len(body)))
        lived = drip(sock, body, interval=0.25, limit=BODY_TIMEOUT + 10)
    assert lived <= BODY_TIMEOUT + SLACK
    assert_serving(router)
    assert_quiet(router, since)


def test_a_body_left_short_after_an_early_answer_is_closed(router):
    """415 is answered before the body is read; the rest of the body still has its deadline."""
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(head("POST", "/generate", "Content-Type: text/plain", length=100) + b"{")
        response = read_until_closed(sock, BODY_TIMEOUT + SLACK)
    assert status(response) == 415


def test_an_oversized_head_is_431(router):
    """hyper's limit (TGI's server): a request line and headers of up to 8192 + 4096 * 100 bytes."""
    limit = 8192 + 4096 * 100
    big = head("GET", "/health", "X-Big: " + "a" * (limit - 1000))
    assert status(exchange(router.port, big + head("GET", "/health", "Connection: close"))) == 200
    # NOTE: all bytes sent are read before the server closes (else the close is a reset, losing the 431)
    too_big = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * limit
    assert status(exchange(router.port, too_big, timeout=10)) == 431
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ")
        # closed while we are still sending (64 MiB was accepted whole before)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(64):
                sock.sendall(b"a" * (1 << 20))
            read_until_closed(sock, 10)
    assert_serving(router)


def test_timeouts_log_one_line_each(router):
    logged = router.log_text()
    assert "Traceback" not in logged
    for line in logged.splitlines():
        if "request body incomplete" in line:
            assert len(line) < 300, line
            break
    else:
        raise AssertionError("no line for a body timeout")
