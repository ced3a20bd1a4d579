"""TGI's own shard (v3.3.7, CPU: `make test` builds it from ../shared/tgi-shard) behind tgi-async's launcher
and router, both schedulers: real clients, the scheduler scenarios (decode-heavy, mixed long prompts, clients
leaving), batch == solo greedy outputs.

TGI's CPU path is a padded CausalLM shard that serves RPCs one at a time, keeps finished requests until
FilterBatch, and starts calls as gRPC hands them over (the order is counted: tgi_async_calls_out_of_order).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from text_generation import Client
from transformers import AutoTokenizer

from integration_tests.conftest import launch, leave_streams, tgi_shard_available
from tests.scheduler.test_schedulers_on_shard import make_request, run_one, start_scheduler
from tgi_async import metrics
from tgi_async.launcher.launch import find_tgi_shard
from tgi_async.launcher.processes import short_tmp_dir, spawn, wait_for_path
from tgi_async.scheduler.request import InferError, SamplingParameters

pytestmark = pytest.mark.skipif(tgi_shard_available() is not None, reason=str(tgi_shard_available()))


@pytest.fixture(scope="module", params=["async", "sync"])
def tgi_stack(request: pytest.FixtureRequest, tgi_model_dir: Path) -> Iterator[str]:
    child, url = launch(
        tgi_model_dir, "--shard", "tgi", "--scheduler", request.param, "--max-concurrent-requests", "256"
    )
    yield url
    assert child.stop(timeout=30) == 0, child.log_tail()


async def generate(client: httpx.AsyncClient, url: str, text: str, max_new_tokens: int) -> str:
    body = {"inputs": text, "parameters": {"max_new_tokens": max_new_tokens}}
    response = await client.post(f"{url}/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_client_generate_and_stream(tgi_stack: str) -> None:
    client = Client(tgi_stack, timeout=120)
    response = client.generate("The router", max_new_tokens=12, decoder_input_details=True)
    streamed = "".join(r.token.text for r in client.generate_stream("The router", max_new_tokens=12))
    assert response.generated_text == streamed


async def test_concurrent_requests_match_solo(tgi_stack: str) -> None:
    prompts = [f"prompt number {i} of the batch" for i in range(16)]
    async with httpx.AsyncClient(timeout=300) as client:
        solo = [await generate(client, tgi_stack, p, 8) for p in prompts]
        together = await asyncio.gather(*(generate(client, tgi_stack, p, 8) for p in prompts))
    assert together == solo


async def test_decode_heavy_streams_match_solo(tgi_stack: str) -> None:
    """32 streams of 48 tokens, joining while the others decode; every output as the same prompt alone."""
    prompts = [f"stream {i} runs long" for i in range(32)]
    async with httpx.AsyncClient(timeout=300) as client:
        solo = [await generate(client, tgi_stack, p, 48) for p in prompts]
        together = await asyncio.gather(*(generate(client, tgi_stack, p, 48) for p in prompts))
    assert together == solo


async def test_mixed_long_prompts_while_streams_decode(tgi_stack: str) -> None:
    """Long prompts arrive while 8 streams decode: every output is what it is alone, nothing is lost.

    NOTE: streamed texts are not compared with the final text: TGI's shard itself streams "" for a pending
    partial UTF-8 character and puts U+FFFD in the final text when a special token interrupts it.
    """
    long_prompt = " ".join(f"word{i}" for i in range(300))
    client = Client(tgi_stack, timeout=300)

    def stream(text: str) -> str:
        events = list(client.generate_stream(text, max_new_tokens=40))
        return events[-1].generated_text or ""

    background = [f"background {i}" for i in range(8)]
    async with httpx.AsyncClient(timeout=300) as http:
        solo_long = await generate(http, tgi_stack, long_prompt, 4)
        solo = [await asyncio.to_thread(stream, text) for text in background]
        streams = [asyncio.ensure_future(asyncio.to_thread(stream, text)) for text in background]
        await asyncio.sleep(0.2)
        longs = [await generate(http, tgi_stack, long_prompt, 4) for _ in range(3)]
        together = await asyncio.gather(*streams)
    assert longs == [solo_long] * 3
    assert together == solo


async def test_clients_leaving_mid_stream(tgi_stack: str) -> None:
    await leave_streams(tgi_stack, 8)
    async with httpx.AsyncClient(timeout=120) as client:
        assert await generate(client, tgi_stack, "after them", 4)
    for _ in range(50):  # the left requests are filtered out at the next steps
        if metric(tgi_stack, "tgi_batch_current_size") == 0:
            break
        await asyncio.sleep(0.1)
    assert metric(tgi_stack, "tgi_batch_current_size") == 0
    assert metric(tgi_stack, "tgi_queue_size") == 0


@pytest.mark.parametrize("policy", ["async", "sync"])
async def test_a_request_tgis_shard_refuses_at_prefill_fails_alone(tgi_model_dir: Path, policy: str) -> None:
    """Issue 16 on TGI's own shard, at the scheduler (no validation in front): temperature 0 makes its from_pb
    raise ValueError (INTERNAL, the shard goes on). Beside 4 live requests in one Prefill, it alone fails with
    the shard's message; the 4 give what they give alone; nothing is left running."""
    command, _ = find_tgi_shard(dict(os.environ))
    assert command is not None
    uds = os.path.join(short_tmp_dir(), "shard")
    child = spawn("tgi-shard", [*command, "serve", str(tgi_model_dir), "--uds-path", uds])
    try:
        wait_for_path(child, f"{uds}-0", timeout=300)
        scheduler, client = await start_scheduler(f"{uds}-0", policy)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tgi_model_dir)
            prompts = ["queue kernel", "the batch decode", "stream router shard", "tensor cache block slot"]
            alone = [await run_one(scheduler, make_request(tokenizer, p, 8)) for p in prompts]
            retries = metrics.PREFILL_ISOLATION_RETRIES.value()
            streams = [run_one(scheduler, make_request(tokenizer, p, 8)) for p in prompts]
            refusing = SamplingParameters(temperature=0.0)
            poison = replace(make_request(tokenizer, "the batch", 8), sampling=refusing)
            streams.insert(2, run_one(scheduler, poison))
            results = await asyncio.gather(*streams, return_exceptions=True)
            refused = results.pop(2)
            assert [ids for ids, _ in results] == [ids for ids, _ in alone]
            assert isinstance(refused, InferError)
            assert refused.message.startswith("Server error: `temperature` (=0.0) has to be a strictly")
            assert metrics.PREFILL_ISOLATION_RETRIES.value() - retries >= 2  # the five were in one Prefill
            assert scheduler.state.running == {}
        finally:
            await scheduler.stop()
            await client.close()
    finally:
        child.stop()
