"""Numbered calls (`x-tgi-async-call`) start in number order at the bundled shard, whatever order gRPC hands
them over in; unnumbered calls (TGI's router) run as they arrive. Real shard and gRPC, calls out of order."""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
from shard_helpers import Blocks, batch, expect_error, request

from tgi_async.client.shard_client import ShardClient
from tgi_async.proto import pb
from tgi_async.proto.call_order import METADATA_KEY, ORDERED_KEY, CallNumbers, announces_ordering, parse

TEXT = "Numbered calls keep their order"


def numbered(instance: str, number: int) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"{instance}/{number}"),)


async def test_a_decode_sent_before_its_prefill_runs_after_it(stub, reference):
    prompt = len(reference.ids(TEXT))
    expected = reference.greedy(TEXT, 2)
    instance = secrets.token_hex(8)
    prefill = pb.PrefillRequest(batch=batch(71, [request(1, TEXT, Blocks(), prompt, max_new_tokens=2)]))
    decode = pb.DecodeRequest(batches=[pb.CachedBatch(id=71, request_ids=[1], size=1)])

    # Call 1 reaches the shard first; call 0 (which creates the batch) only later.
    early = asyncio.ensure_future(stub.Decode(decode, metadata=numbered(instance, 1)))
    await asyncio.sleep(0.03)
    assert not early.done()  # held back for call 0
    first = await stub.Prefill(prefill, metadata=numbered(instance, 0))
    second = await early

    assert [first.generations[0].tokens.ids[0], second.generations[0].tokens.ids[0]] == expected
    assert second.generations[0].generated_text.generated_tokens == 2


async def test_unnumbered_calls_run_as_they_arrive(stub, reference):
    prompt = len(reference.ids(TEXT))
    decode = pb.DecodeRequest(batches=[pb.CachedBatch(id=72, request_ids=[1], size=1)])
    await expect_error(stub.Decode(decode), grpc.StatusCode.NOT_FOUND)
    prefill = pb.PrefillRequest(batch=batch(72, [request(1, TEXT, Blocks(), prompt)]))
    await stub.Prefill(prefill)
    await stub.ClearCache(pb.ClearCacheRequest(id=72))


async def test_a_number_that_never_comes_delays_the_next_calls_briefly(stub):
    instance = secrets.token_hex(8)
    await stub.ClearCache(pb.ClearCacheRequest(id=73), metadata=numbered(instance, 0))
    started = time.perf_counter()
    await stub.ClearCache(pb.ClearCacheRequest(id=73), metadata=numbered(instance, 2))  # 1 was never sent
    waited = time.perf_counter() - started
    assert 0.08 < waited < 2.0
    started = time.perf_counter()
    await stub.ClearCache(pb.ClearCacheRequest(id=73), metadata=numbered(instance, 3))  # in order: no wait
    assert time.perf_counter() - started < 0.08


def test_call_numbers_count_up_per_client_and_parse_back():
    numbers, other = CallNumbers(), CallNumbers()
    keys = [parse([numbers.next()]) for _ in range(3)]
    assert keys == [(numbers.instance, 0), (numbers.instance, 1), (numbers.instance, 2)]
    assert other.instance != numbers.instance and parse([other.next()]) == (other.instance, 0)
    assert parse([("traceparent", "00-ab-cd-01"), (METADATA_KEY, b"abc/7")]) == ("abc", 7)
    assert parse([(METADATA_KEY, "no-number")]) is None and parse(None) is None


async def test_the_bundled_shard_says_it_orders_calls(bundled_shard):
    client = ShardClient(bundled_shard)
    try:
        assert (await client.info()).orders_calls  # read from Info's initial metadata
    finally:
        await client.close()
    assert announces_ordering([(ORDERED_KEY, "1")]) and not announces_ordering([("other", "1")])
    assert not announces_ordering(None)  # TGI's shards: the async loop gives each call time to start
