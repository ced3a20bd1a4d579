"""The benchmarks' load generator (benchmarks/sse_client.py) against a real router: what it counts is what the
router streamed, errors are recorded, and connections are kept alive between requests."""

from __future__ import annotations

import asyncio

import httpx

from benchmarks.harness import stream
from benchmarks.sse_client import SSEClient


async def test_counts_the_streamed_tokens_on_one_kept_connection(router_url):
    async with SSEClient(router_url) as client:
        await client.open(1)
        first = await stream(client, "counted tokens", 7)
        second = await stream(client, "counted tokens again", 3)
        assert len(client._all) == 1  # both requests went over the connection opened ahead
    assert (first.error, second.error) == (None, None)
    assert (len(first.token_times), len(second.token_times)) == (7, 3)
    assert first.sent < first.token_times[0] <= first.token_times[-1]


async def test_matches_what_another_client_receives(router_url):
    body = {"inputs": "same stream", "parameters": {"max_new_tokens": 5}}
    async with httpx.AsyncClient(base_url=router_url) as http:
        expected = (await http.post("/generate_stream", json=body)).content.count(b"data:")
    async with SSEClient(router_url) as client:
        events: list[bytes] = []
        status = await client.post("/generate_stream", body, lambda _, event: events.append(event))
    assert status == 200
    assert len(events) == expected == 5


async def test_records_errors_and_concurrent_streams(router_url):
    async with SSEClient(router_url) as client:
        bad, *good = await asyncio.gather(
            stream(client, "", 2), *(stream(client, f"concurrent {i}", 4) for i in range(3))
        )
    assert bad.error is not None and "`inputs` cannot be empty" in bad.error
    assert [(g.error, len(g.token_times)) for g in good] == [(None, 4)] * 3
