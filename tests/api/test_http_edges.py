"""What a public endpoint meets from clients with raw sockets: slow or silent connections, short bodies,
Host-echoing redirects, deeply nested JSON, clients leaving mid-body. A real router, its log read after.

One router (strict shard, `--simulate test`: no model needed) per scheduler, with short timeouts.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.raw_http import body_of, exchange, head, header_names, port_of, post, status
from tgi_async.launcher.processes import start_bundled_shard, start_router

FLAGS: tuple[str, ...] = ()
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
    """No traceback and no error line in the router's log after offset `since`."""
    logged = router.log_text()[since:]
    assert "Traceback" not in logged, logged[-3000:]
    assert " ERROR " not in logged, logged[-3000:]


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
