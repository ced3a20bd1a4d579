"""Router flags end to end: --max-concurrent-requests (429), --api-key (401), --payload-limit (413), CORS.

One router for all of them (processes are the expensive part of these tests).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from text_generation import AsyncClient
from text_generation.errors import OverloadedError

KEY = "s3cret"
FLAGS = (
    "--max-concurrent-requests",
    "1",
    "--api-key",
    KEY,
    "--payload-limit",
    "4000",
    "--cors-allow-origin",
    "http://allowed.example",
)
AUTH = {"authorization": f"Bearer {KEY}"}
OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}


async def permit_within(client: httpx.AsyncClient, seconds: float) -> bool:
    """Whether a small request is admitted (not 429) within `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        r = await client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
        if r.status_code != 429 or asyncio.get_running_loop().time() > deadline:
            return r.status_code == 200
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def limited_url(start_router) -> str:
    return start_router(*FLAGS)


# TGI v3.3.7's `base_routes` (router/src/server.rs), the only ones behind --api-key
GUARDED = ("/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/vertex",
           "/invocations", "/tokenize")  # fmt: skip


def test_api_key_guards_generation_routes_only(limited_url):
    with httpx.Client(base_url=limited_url, timeout=60) as http:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 1}}
        for path in GUARDED:
            r = http.post(path, json=body)
            assert (r.status_code, r.content) == (401, b""), path
        # axum layers a path's 405 fallback too: a wrong method needs the key first (not on `/`, whose
        # fallback is the open GET route's)
        assert http.get("/generate").status_code == 401
        assert http.get("/generate", headers=AUTH).status_code == 405
        assert http.put("/").status_code == 405
        # /chat_tokenize is among TGI's open routes, like /info
        chat = {"messages": [{"role": "user", "content": "Hi"}]}
        r = http.post("/chat_tokenize", json=chat)
        assert r.status_code == 200 and r.json()["templated_text"]
        assert http.get("/v1/models").status_code == 200
        r = http.post("/generate", json=body, headers={"authorization": "Bearer wrong"})
        assert (r.status_code, r.content) == (401, b"")
        assert http.post("/generate", json=body, headers=AUTH).status_code == 200
        # TGI compares the whole header case-insensitively
        assert (
            http.post("/generate", json=body, headers={"authorization": f"bearer {KEY.upper()}"}).status_code
            == 200
        )
        for path in ("/health", "/info", "/metrics", "/"):
            assert http.get(path).status_code == 200, path


def test_payload_limit(limited_url):
    with httpx.Client(base_url=limited_url, timeout=60, headers=AUTH) as http:
        r = http.post("/generate", json={"inputs": "a" * 5000})
        assert (r.status_code, r.headers["content-type"]) == (413, "text/plain; charset=utf-8")
        assert r.text == "Failed to buffer the request body: length limit exceeded"
        chunked = http.post(
            "/generate",
            content=iter([b'{"inputs": "', b"a" * 5000, b'"}']),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        assert (
            http.post(
                "/generate", json={"inputs": "a" * 100, "parameters": {"max_new_tokens": 1}}
            ).status_code
            == 200
        )


def test_cors_origin_list(limited_url):
    with httpx.Client(base_url=limited_url, timeout=60) as http:
        allowed = http.get("/info", headers={"origin": "http://allowed.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
        other = http.get("/info", headers={"origin": "http://other.example"})
        assert "access-control-allow-origin" not in other.headers
        assert (
            other.headers["vary"] == "origin, access-control-request-method, access-control-request-headers"
        )


async def test_overload_and_release_on_disconnect(limited_url):
    async with httpx.AsyncClient(base_url=limited_url, timeout=60, headers=AUTH) as client:
        # ~7 s of decoding (no EOS for 2048 tokens): a permit coming back within 1 s means the client left
        long = {"inputs": "Hello world", "parameters": {"max_new_tokens": 2000}}
        started = asyncio.Event()

        async def hold() -> None:
            async with client.stream("POST", "/generate_stream", json=long) as stream:
                async for _ in stream.aiter_bytes():
                    started.set()  # keep reading: the permit is held while the stream runs

        holder = asyncio.ensure_future(hold())
        await asyncio.wait_for(started.wait(), 30)
        small = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        r = await client.post("/generate", json=small)
        assert (r.status_code, r.json()) == (429, OVERLOADED)
        assert r.headers["content-type"] == "application/json"
        r = await client.post("/generate_stream", json=small)
        assert r.status_code == 200  # TGI reports it inside the stream
        assert json.loads(r.content.removeprefix(b"data: ")) == OVERLOADED
        with pytest.raises(OverloadedError, match="Model is overloaded"):  # what text-generation makes of it
            await AsyncClient(limited_url, headers=AUTH, timeout=60).generate("Hi", max_new_tokens=1)
        assert not holder.done()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        # the stream's client left: its permit comes back (and the scheduler drops the request)
        assert await permit_within(client, 1.0)

        # a non-streaming request whose client leaves releases its permit too
        task = asyncio.ensure_future(client.post("/generate", json=long))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await permit_within(client, 1.0)
        metrics = (await client.get("/metrics")).text
        assert 'tgi_request_failure{err="overloaded"} ' in metrics
