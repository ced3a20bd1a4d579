"""The router (both schedulers) in front of the strict TGI-semantics shard, as real processes: real gRPC over
a Unix socket, real HTTP, the text-generation client. The shard ends requests at a seeded EOS rate and fails
like TGI's shard on any KV write outside an allocation; here it also dies, hangs and fails steps."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from text_generation import Client

from integration_tests.conftest import leave_streams
from tgi_async.launcher.processes import ChildProcess, start_bundled_shard, start_router
from tgi_async.strict_shard import tokens

# NOTE: the calls start in arrival order, as TGI's shard starts them (benchmarks/dispatch_order.py); shuffled
# orders are tested in process (tests/scheduler), where timing is the test's: here the machine's load would be
STRICT = ("--simulate", "test", "--eos-rate", "0.05", "--block-size", "1")
ROUTER = (
    "--max-batch-prefill-tokens",
    "512",
    "--prefill-step-tokens",
    "64",
    "--max-concurrent-requests",
    "256",
)


def start_stack(model: Path, scheduler: str, *shard: str, router: tuple[str, ...] = ()):
    shard_child, socket_path = start_bundled_shard(model, *STRICT, *shard)
    try:
        router_child, url = start_router(model, socket_path, "--scheduler", scheduler, *ROUTER, *router)
    except Exception:
        shard_child.stop()
        raise
    return shard_child, router_child, url


POISON = "POISON"  # the shard refuses a prompt holding it at Prefill (--refuse-prompt: test only)


@pytest.fixture(scope="module", params=["async", "sync"])
def strict_stack(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[tuple[ChildProcess, str]]:
    shard, router, url = start_stack(tiny_model_dir, request.param, "--refuse-prompt", POISON)
    yield shard, url
    router.stop()
    assert shard.stop() == 0, shard.log_tail()


def expected_text(prompt: str, tokens_generated: int) -> str:
    key = tokens.prompt_key(prompt)
    return "".join(tokens.token_text(key, g) for g in range(1, tokens_generated + 1))


def test_warmup_gets_tgis_max_prefill_tokens(strict_stack: tuple[ChildProcess, str]) -> None:
    """Defect 4: the async router used to send --prefill-step-tokens (64) as Warmup's max_prefill_tokens, and
    TGI's shards size their KV cache after that forward."""
    shard, _ = strict_stack
    assert "Warmup: max_prefill_tokens=512," in shard.log_tail(200)


async def test_concurrent_streams_are_exact_and_batch_equals_solo(strict_stack) -> None:
    _, url = strict_stack
    prompts = [f"request number {i} " + "word " * (i * 7 % 90) for i in range(48)]

    async def generate(client: httpx.AsyncClient, prompt: str) -> tuple[str, int]:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 5 + len(prompt) % 40, "details": True}}
        response = await client.post(f"{url}/generate", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        details = answer["details"]
        # EOS is generated (counted) but not part of the text
        return answer["generated_text"], details["generated_tokens"] - (
            details["finish_reason"] == "eos_token"
        )

    async with httpx.AsyncClient(timeout=120) as client:
        together = await asyncio.gather(*(generate(client, p) for p in prompts))
        solo = [await generate(client, p) for p in prompts[:8]]
    assert together[:8] == solo
    for prompt, (text, count) in zip(prompts, together, strict=True):
        assert text == expected_text(prompt, count)  # every token, in order, of its own stream


def test_streamed_tokens_equal_the_final_text(strict_stack) -> None:
    _, url = strict_stack
    client = Client(url, timeout=120)
    for i in range(4):
        prompt = f"stream {i}"
        streamed = list(client.generate_stream(prompt, max_new_tokens=30))
        text = "".join(r.token.text for r in streamed if not r.token.special)
        assert (
            streamed[-1].generated_text
            == text
            == expected_text(prompt, len(streamed) - streamed[-1].token.special)
        )


async def test_clients_leaving_mid_stream_leave_nothing_behind(strict_stack) -> None:
    _, url = strict_stack
    await leave_streams(url, 12)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{url}/generate", json={"inputs": "after", "parameters": {"max_new_tokens": 3}}
        )
        assert response.status_code == 200


async def test_a_request_the_shard_refuses_fails_alone(strict_stack) -> None:
    """Issue 16: a request that passes validation yet fails the shard's Prefill, beside 4 live requests (and
    joining a running stream): it alone gets TGI's 424 with the shard's message; other outputs are whole."""
    _, url = strict_stack

    async def generate(client: httpx.AsyncClient, prompt: str, max_new_tokens: int) -> httpx.Response:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
        return await client.post(f"{url}/generate", json=body)

    def text_of(response: httpx.Response, prompt: str) -> str:
        assert response.status_code == 200, response.text
        answer = response.json()
        details = answer["details"]
        assert answer["generated_text"] == expected_text(
            prompt, details["generated_tokens"] - (details["finish_reason"] == "eos_token")
        )
        return answer["generated_text"]

    prompts = [f"live request {i}" for i in range(4)]
    async with httpx.AsyncClient(timeout=120) as client:
        solo = [text_of(await generate(client, p, 12), p) for p in prompts]
        running = asyncio.ensure_future(generate(client, "a long running stream", 80))
        await asyncio.sleep(0.2)  # it streams when the others arrive
        streams = [generate(client, p, 12) for p in prompts]
        streams.insert(2, generate(client, f"a {POISON} request", 12))
        answers = await asyncio.gather(*streams)
        refused = answers.pop(2)
        long = await running
    assert [text_of(a, p) for a, p in zip(answers, prompts, strict=True)] == solo
    text_of(long, "a long running stream")
    assert refused.status_code == 424
    assert refused.json()["error_type"] == "generation"
    assert re.fullmatch(
        r"Request failed during generation: Server error: "
        rf"request \d+ cannot be built: its prompt holds '{POISON}'",
        refused.json()["error"],
    )


@pytest.mark.parametrize("scheduler", ["async", "sync"])
def test_a_shard_that_dies_ends_every_stream_and_health(tiny_model_dir: Path, scheduler: str) -> None:
    """Issue 16, finding 4: the bodies used to carry gRPC's text with the shard's socket path
    (`unix:/tmp/...: connect failed`), and /health said 200 for seconds after every call had failed."""
    shard, router, url = start_stack(tiny_model_dir, scheduler, "--fault", "40:die", "--eos-rate", "0")
    try:
        body = {"inputs": "the shard dies under this stream", "parameters": {"max_new_tokens": 500}}
        started = time.monotonic()
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{url}/generate_stream", json=body) as response:
                events = [line for line in response.iter_lines() if line.startswith("data:")]
            assert time.monotonic() - started < 10
            assert '"error_type":"generation"' in events[-1], events[-1]
            ended_at = time.monotonic()
            assert client.get(f"{url}/health").status_code == 503
            assert time.monotonic() - ended_at < 1.0
            after = client.post(
                f"{url}/generate", json={"inputs": "after", "parameters": {"max_new_tokens": 3}}
            )
        assert after.status_code == 424, after.text
        for text in (events[-1], after.text):
            assert '"Request failed during generation: Server error: ' in text, text
            for leak in ("unix:", "/tmp", "connect", "ipv4", "grpc"):
                assert leak not in text, text
    finally:
        router.stop()
        shard.stop()


@pytest.mark.parametrize("scheduler", ["async", "sync"])
def test_health_is_red_as_soon_as_an_idle_shard_is_gone(tiny_model_dir: Path, scheduler: str) -> None:
    """Issue 16, finding 4: after a success /health answered 200 for 5 s without asking the shard."""
    shard, router, url = start_stack(tiny_model_dir, scheduler)
    try:
        with httpx.Client(timeout=30) as client:
            ok = client.post(f"{url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert ok.status_code == 200 and client.get(f"{url}/health").status_code == 200
            shard.popen.kill()
            shard.popen.wait()
            assert client.get(f"{url}/health").status_code == 503
    finally:
        router.stop()


@pytest.mark.parametrize("scheduler", ["async", "sync"])
def test_a_hung_shard_fails_its_requests_and_health_within_5_s(tiny_model_dir: Path, scheduler: str) -> None:
    shard, router, url = start_stack(
        tiny_model_dir,
        scheduler,
        "--fault",
        "30:hang",
        "--eos-rate",
        "0",
        router=("--shard-call-timeout", "3"),
    )
    try:
        body = {"inputs": "this stream hangs", "parameters": {"max_new_tokens": 500}}
        with httpx.Client(timeout=30) as client:
            hung: float | None = None
            with client.stream("POST", f"{url}/generate_stream", json=body) as response:
                for line in response.iter_lines():
                    if '"error"' in line:
                        break
            failed_at = time.monotonic()
            # /health turned 503 within 5 s of the hang: the stream's error came 3 s (its deadline) after it
            deadline = failed_at + 2.0
            while time.monotonic() < deadline and hung is None:
                if client.get(f"{url}/health").status_code == 503:
                    hung = time.monotonic()
                time.sleep(0.1)
            assert hung is not None
    finally:
        router.stop()
        shard.stop()
