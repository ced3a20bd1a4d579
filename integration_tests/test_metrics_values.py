"""TGI's batch metrics carry TGI's values under both schedulers, read from /metrics of a real router in front
of the strict TGI-semantics shard (a flash shard's contract: chunking, concat timings, failing steps)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration_tests.test_strict_shard import start_stack

# TGI v3.3.7 backends/v3/src/backend.rs: the only label values these series ever take.
TGI_CONCAT_REASONS = {"backpressure", "chunking", "wait_exceeded"}
TGI_CONCAT_DURATION_METHODS = {"decode"}  # TGI labels it "decode" inside prefill() too


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labelled(values: dict, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in values if n == name}


async def stream_all(url: str, count: int, max_new_tokens: int) -> list[str]:
    """`count` concurrent streams; the last event of each."""

    async def one(client: httpx.AsyncClient, i: int) -> str:
        body = {"inputs": f"metrics request {i}", "parameters": {"max_new_tokens": max_new_tokens}}
        async with client.stream("POST", f"{url}/generate_stream", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
        return lines[-1]

    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(one(client, i) for i in range(count)))


@pytest.mark.parametrize("scheduler", ["async", "sync"])
def test_batch_metrics_take_tgis_values(tiny_model_dir: Path, scheduler: str) -> None:
    """Issue 15, metrics: tgi_batch_max_total_tokens was never set, tgi_batch_filter_duration absent under
    async, tgi_request_skipped_tokens never observed, concat labels not TGI's."""
    shard, router, url = start_stack(tiny_model_dir, scheduler, "--eos-rate", "0")
    try:
        before = samples(url)
        lasts = asyncio.run(stream_all(url, 6, 12))
        assert all('"generated_text"' in last for last in lasts), lasts
        after = samples(url)
    finally:
        router.stop()
        shard.stop()

    assert after[("tgi_batch_max_total_tokens", ())] > 0  # set once, after Warmup
    # One observation per Generation (n - 1 tokens: 0 without speculation): 6 requests x 12 tokens.
    skipped = ("tgi_request_skipped_tokens_count", ())
    assert after[skipped] - before.get(skipped, 0) == 6 * 12
    assert after[("tgi_request_skipped_tokens_sum", ())] == 0
    for method in ("prefill", "decode"):
        key = ("tgi_batch_filter_duration_count", (("method", method),))
        assert after.get(key, 0) > 0, (method, sorted(k for k in after if "filter" in k[0]))
    assert labelled(after, "tgi_batch_concat", "reason") <= TGI_CONCAT_REASONS
    assert labelled(after, "tgi_batch_concat_duration_count", "method") <= TGI_CONCAT_DURATION_METHODS


@pytest.mark.parametrize("scheduler", ["async", "sync"])
def test_failed_steps_count_generation_failures(tiny_model_dir: Path, scheduler: str) -> None:
    """Issue 15, metrics: tgi_request_failure{err="generation"} was never counted under async (the requests
    were failed before the count, which skips requests already ended)."""
    shard, router, url = start_stack(tiny_model_dir, scheduler, "--fault", "6:fail", "--eos-rate", "0")
    try:
        lasts = asyncio.run(stream_all(url, 4, 40))
        after = samples(url)
    finally:
        router.stop()
        shard.stop()
    failed = sum('"error_type":"generation"' in last for last in lasts)
    assert failed > 0, lasts
    # NOTE: prometheus_client's parser names counters `_total` (the text has TGI's `tgi_request_failure`)
    assert after[("tgi_request_failure_total", (("err", "generation"),))] == failed


def test_endpoint_picker_gauges_follow_the_state(tiny_model_dir: Path) -> None:
    """Issue 15, scale-out: the Gateway API Inference Extension's endpoint picker reads a KV-cache utilization
    gauge (0-1), the cache layout and LoRA info (vLLM's label names); tgi-async had none of them. The shard
    hangs on its 3rd step, so the requests hold their KV while /metrics is read."""
    shard, router, url = start_stack(tiny_model_dir, "async", "--fault", "3:hang", "--eos-rate", "0")
    try:
        idle = samples(url)

        async def scrape_while_running() -> dict:
            async def adapter_request() -> str:
                body = {"inputs": "lora", "parameters": {"max_new_tokens": 30, "adapter_id": "my-adapter"}}
                async with httpx.AsyncClient(timeout=60) as client:
                    return (await client.post(f"{url}/generate", json=body)).text

            requests = asyncio.gather(stream_all(url, 3, 30), adapter_request())
            try:
                for _ in range(200):
                    scrape = await asyncio.to_thread(samples, url)
                    if scrape[("tgi_async_kv_cache_usage_perc", ())] > 0 and "my-adapter" in str(scrape):
                        return scrape
                    await asyncio.sleep(0.05)
                raise AssertionError(f"no KV-cache use or adapter while requests ran: {scrape}")
            finally:
                requests.cancel()

        running = asyncio.run(scrape_while_running())
    finally:
        router.stop()
        shard.stop()

    assert idle[("tgi_async_kv_cache_usage_perc", ())] == 0
    assert 0 < running[("tgi_async_kv_cache_usage_perc", ())] < 1
    (layout,) = [dict(labels) for (name, labels) in running if name == "tgi_async_cache_config_info"]
    assert layout["block_size"] == "1" and int(layout["num_gpu_blocks"]) > 0
    (lora,) = [dict(labels) for (name, labels) in running if name == "tgi_async_lora_requests_info"]
    assert lora["max_lora"] == "0"
    assert {lora["running_lora_adapters"], lora["waiting_lora_adapters"]} == {"my-adapter", ""}
