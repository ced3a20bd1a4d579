"""Both schedulers against the real bundled shard over a Unix socket (no HTTP): outputs, streaming, limits."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tgi_async import metrics
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.router.startup import resolve_limits, warm_up
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.factory import create_scheduler
from tgi_async.scheduler.request import (
    EndEvent,
    GenerateRequest,
    InferError,
    SamplingParameters,
    StoppingParameters,
    TokenEvent,
)

POLICIES = ["sync", "async"]
WORDS = "the batch decode prefill stream router shard queue kernel tensor cache block slot".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def make_request(tokenizer, prompt: str, max_new_tokens: int = 12, **stopping) -> GenerateRequest:
    return GenerateRequest(
        inputs=prompt,
        input_length=len(tokenizer(prompt).input_ids),
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=max_new_tokens, ignore_eos_token=True, **stopping),
    )


async def run_one(scheduler, request: GenerateRequest) -> tuple[list[int], EndEvent]:
    ids: list[int] = []
    async for event in scheduler.generate(request):
        if isinstance(event, TokenEvent):
            ids.append(event.token.id)
        elif isinstance(event, EndEvent):
            ids.append(event.token.id)
            return ids, event
    raise AssertionError("stream ended without an EndEvent")


async def start_scheduler(shard: str, policy: str, **overrides):
    client = await ShardedClient.connect(shard)
    config = SchedulerConfig(policy=policy, **overrides)
    prefill = min(config.max_batch_prefill_tokens, config.prefill_step_tokens)
    info, warmup = await warm_up(client, None, prefill, None, None)
    limits = resolve_limits(warmup, info, None, None, config.max_batch_prefill_tokens, None)
    config = SchedulerConfig(policy=policy, max_batch_total_tokens=limits.max_batch_total_tokens, **overrides)
    scheduler = create_scheduler(client, info, config)
    scheduler.start()
    return scheduler, client


@pytest.mark.parametrize("policy", POLICIES)
async def test_concurrent_greedy_outputs_equal_alone(shard: str, tokenizer, policy: str) -> None:
    scheduler, client = await start_scheduler(shard, policy)
    try:
        rng = random.Random(0)
        prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(24)]
        lengths = [rng.randint(1, 20) for _ in prompts]
        alone = [
            await run_one(scheduler, make_request(tokenizer, p, n))
            for p, n in zip(prompts[:6], lengths[:6], strict=True)
        ]
        together = await asyncio.gather(
            *(
                run_one(scheduler, make_request(tokenizer, p, n))
                for p, n in zip(prompts, lengths, strict=True)
            )
        )
        for (ids_alone, _), (ids_together, _) in zip(alone, together[:6], strict=True):
            assert ids_together == ids_alone
        for (ids, end), n in zip(together, lengths, strict=True):
            assert len(ids) == n == end.generated_text.generated_tokens
            assert end.generated_text.finish_reason == "length"
        assert scheduler.state.running == {}
        assert scheduler.state.allocator.free_blocks == scheduler.state.allocator.total_blocks - 1
    finally:
        await scheduler.stop()
        await client.close()


@pytest.mark.parametrize("policy", POLICIES)
async def test_cancelled_stream_frees_its_blocks(shard: str, tokenizer, policy: str) -> None:
    scheduler, client = await start_scheduler(shard, policy)
    try:
        stream = scheduler.generate(make_request(tokenizer, "the batch decode", max_new_tokens=500))
        got = [await stream.__anext__() for _ in range(3)]
        assert all(isinstance(e, TokenEvent) for e in got)
        await stream.aclose()
        other = await run_one(scheduler, make_request(tokenizer, "queue kernel", 5))
        assert len(other[0]) == 5
        for _ in range(100):
            if not scheduler.state.running:
                break
            await asyncio.sleep(0.02)
        assert scheduler.state.running == {}
        assert scheduler.state.allocator.free_blocks == scheduler.state.allocator.total_blocks - 1
    finally:
        await scheduler.stop()
        await client.close()


@pytest.mark.parametrize("policy", POLICIES)
async def test_long_prompt_is_chunked_and_matches_alone(shard: str, tokenizer, policy: str) -> None:
    scheduler, client = await start_scheduler(
        shard, policy, max_batch_prefill_tokens=256, prefill_step_tokens=64
    )
    try:
        long_prompt = " ".join(WORDS * 40)
        alone = await run_one(scheduler, make_request(tokenizer, long_prompt, 6))
        streams = [run_one(scheduler, make_request(tokenizer, "slot cache", 30)) for _ in range(4)]
        results = await asyncio.gather(*streams, run_one(scheduler, make_request(tokenizer, long_prompt, 6)))
        assert results[-1][0] == alone[0]
        assert all(len(ids) == 30 for ids, _ in results[:-1])
    finally:
        await scheduler.stop()
        await client.close()


@pytest.mark.parametrize("policy", POLICIES)
async def test_shard_error_reaches_only_its_request(shard: str, tokenizer, policy: str) -> None:
    """A request the shard refuses at Prefill (it slipped past validation), in one Prefill with 4 live ones:
    it alone fails with the shard's message, the 4 give what they give alone, every block comes back."""
    scheduler, client = await start_scheduler(shard, policy)
    try:
        bad = GenerateRequest(
            inputs="the batch",
            input_length=len(tokenizer("the batch").input_ids),
            sampling=SamplingParameters(temperature=0.0),  # rejected by the shard (INVALID_ARGUMENT)
            stopping=StoppingParameters(max_new_tokens=4),
        )
        prompts = ["queue kernel", "the batch decode", "stream router shard", "tensor cache block slot"]
        alone = [await run_one(scheduler, make_request(tokenizer, p, 8)) for p in prompts]
        retries = metrics.PREFILL_ISOLATION_RETRIES.value()
        streams = [run_one(scheduler, make_request(tokenizer, p, 8)) for p in prompts]
        streams.insert(2, run_one(scheduler, bad))
        results = await asyncio.gather(*streams, return_exceptions=True)
        refused = results.pop(2)
        assert [ids for ids, _ in results] == [ids for ids, _ in alone]
        assert isinstance(refused, InferError)
        assert re.fullmatch(r"Server error: request \d+: temperature must be > 0, got 0\.0", refused.message)
        assert metrics.PREFILL_ISOLATION_RETRIES.value() - retries >= 2  # the five were in one Prefill
        assert scheduler.state.running == {}
        assert scheduler.state.allocator.free_blocks == scheduler.state.allocator.total_blocks - 1
    finally:
        await scheduler.stop()
        await client.close()
