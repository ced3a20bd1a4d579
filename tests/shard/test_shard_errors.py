"""Bad input gets a clear gRPC error, changes nothing, and the shard keeps serving a live batch correctly."""

from __future__ import annotations

import grpc
import pytest
from shard_helpers import GREEDY, Blocks, Outputs, batch, expect_error, request

from tgi_async.proto import pb

LIVE_PROMPT = "Many people made things here, and they took the long way back home."
LIVE_TOKENS = 24
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


class Live:
    """A batch that keeps decoding between the bad calls; its tokens must match the reference at the end."""

    def __init__(self, stub, reference):
        self.stub, self.reference = stub, reference
        self.out = Outputs()
        self.cached: pb.CachedBatch | None = None

    async def start(self, blocks: Blocks) -> None:
        ids = self.reference.ids(LIVE_PROMPT)
        message = request(900, LIVE_PROMPT, blocks, len(ids), LIVE_TOKENS, ignore_eos=True)
        response = await self.stub.Prefill(pb.PrefillRequest(batch=batch(900, [message])))
        self.out.add(response.generations)
        self.cached = response.batch

    async def step(self) -> None:
        response = await self.stub.Decode(pb.DecodeRequest(batches=[self.cached]))
        self.out.add(response.generations)
        self.cached = response.batch

    def check(self) -> None:
        ids = self.reference.ids(LIVE_PROMPT)
        expected = [int(i) for i in _greedy_ignoring_eos(self.reference, ids, len(self.out.tokens[900]))]
        assert self.out.tokens[900] == expected


def _greedy_ignoring_eos(reference, ids: list[int], count: int) -> list[int]:
    tokens = list(ids)
    for _ in range(count):
        tokens.append(int(reference.log_softmax(tokens)[-1].argmax()))
    return tokens[len(ids) :]


@pytest.fixture
async def live(stub, reference):
    blocks = Blocks()
    live = Live(stub, reference)
    await live.start(blocks)
    live.blocks = blocks
    yield live
    await stub.ClearCache(pb.ClearCacheRequest(id=900))


def bad_request(reference, blocks, request_id: int = 77, **fields) -> pb.Request:
    text = "What time is it?"
    return request(request_id, text, blocks, len(reference.ids(text)), 4, **fields)


async def test_unknown_batches(stub, live):
    await expect_error(stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=12345)])), NOT_FOUND, "12345")
    await live.step()
    await expect_error(
        stub.Decode(pb.DecodeRequest(batches=[live.cached, pb.CachedBatch(id=12345)])), NOT_FOUND
    )
    await live.step()
    await expect_error(stub.Decode(pb.DecodeRequest(batches=[live.cached, live.cached])), INVALID)
    await expect_error(stub.Decode(pb.DecodeRequest()), INVALID, "at least one batch")
    await expect_error(stub.FilterBatch(pb.FilterBatchRequest(batch_id=12345, request_ids=[1])), NOT_FOUND)
    message = pb.PrefillRequest(batch=batch(78, [bad_request(live.reference, live.blocks)]))
    message.cached_batch.id = 12345
    await expect_error(stub.Prefill(message), NOT_FOUND, "12345")
    await expect_error(stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=78)])), NOT_FOUND)
    await live.step()
    live.check()


async def test_bad_filters(stub, live):
    await expect_error(stub.FilterBatch(pb.FilterBatchRequest(batch_id=900)), INVALID, "ClearCache")
    await live.step()
    await expect_error(
        stub.FilterBatch(pb.FilterBatchRequest(batch_id=900, request_ids=[900, 5])), INVALID, "[5]"
    )
    await expect_error(stub.FilterBatch(pb.FilterBatchRequest(batch_id=900, request_ids=[900, 900])), INVALID)
    await live.step()
    live.check()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r.ClearField("slots"), "no slots"),
        (lambda r: r.slots.__setitem__(0, 1 << 30), "out of range"),
        (lambda r: r.ClearField("slots") or r.slots.extend([16, 17]), "2 slots"),
        (lambda r: r.parameters.CopyFrom(pb.NextTokenChooserParameters()), "all zeros"),
        (lambda r: setattr(r.parameters, "grammar", "[unclosed"), "invalid grammar (regex)"),
        (lambda r: setattr(r.parameters, "temperature", -1.0), "temperature"),
        (lambda r: setattr(r.stopping_parameters, "max_new_tokens", 0), "max_new_tokens"),
        (lambda r: setattr(r, "cache_len", 50), "cache_len"),
        (lambda r: setattr(r, "chunk_len", 0), "chunk_len"),
        (lambda r: setattr(r, "chunk_len", 500), "chunk_len"),
        (lambda r: r.input_chunks.ClearField("chunks"), "no text chunk"),
    ],
)
async def test_bad_requests_are_rejected_whole(stub, reference, live, change, fragment):
    good = bad_request(reference, live.blocks, request_id=76)
    bad = bad_request(reference, live.blocks)
    change(bad)
    details = await expect_error(
        stub.Prefill(pb.PrefillRequest(batch=batch(77, [good, bad]))), INVALID, fragment
    )
    assert "request 77" in details or "batch 77" in details
    # with a cached batch: the live batch is neither consumed nor changed
    message = pb.PrefillRequest(batch=batch(77, [good, bad]), cached_batch=live.cached)
    await expect_error(stub.Prefill(message), INVALID, fragment)
    await expect_error(stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=77)])), NOT_FOUND)
    await live.step()
    live.check()


async def test_batch_level_errors(stub, reference, live):
    await expect_error(stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=79))), INVALID, "no requests")
    twice = [bad_request(reference, live.blocks), bad_request(reference, live.blocks)]
    await expect_error(stub.Prefill(pb.PrefillRequest(batch=batch(79, twice))), INVALID, "duplicate")
    # a new batch whose request id is already in the cached batch it would join
    message = pb.PrefillRequest(batch=batch(79, [bad_request(reference, live.blocks, request_id=900)]))
    message.cached_batch.CopyFrom(live.cached)
    await expect_error(stub.Prefill(message), INVALID, "900")
    await live.step()
    live.check()


async def test_a_step_without_a_slot_is_refused_and_the_batch_survives(stub, reference, live):
    # slots for the prompt only, though 4 new tokens are allowed: the first decode would overflow
    short = bad_request(reference, live.blocks, request_id=81, extra_slots=-3)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(81, [short]), cached_batch=live.cached))
    live.out.add(response.generations)
    assert {g.request_id for g in response.generations} == {900, 81}
    await expect_error(
        stub.Decode(pb.DecodeRequest(batches=[response.batch])), INVALID, "request 81", "slots"
    )
    # nothing moved: the router filters the request out and the batch goes on
    filtered = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=900, request_ids=[900]))
    live.cached = filtered.batch
    await live.step()
    live.check()
    assert len(live.out.tokens[900]) == 3


async def test_greedy_parameters_must_be_complete(stub, reference):
    blocks = Blocks()
    params = pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0)
    assert params == GREEDY
    message = bad_request(reference, blocks, request_id=82, parameters=params)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(82, [message])))
    assert [g.request_id for g in response.generations] == [82]
    await stub.ClearCache(pb.ClearCacheRequest(id=82))
