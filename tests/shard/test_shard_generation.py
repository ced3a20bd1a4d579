"""The bundled shard generates what plain transformers does, across every batch operation of TGI's router."""

from __future__ import annotations

import math

import grpc
import torch
from shard_helpers import (
    MAX_PREFILL_TOKENS,
    Blocks,
    Outputs,
    batch,
    decode_until_done,
    expect_error,
    filter_finished,
    request,
)

from tgi_async.proto import pb
from tgi_async.shard.kv_cache import BLOCK_SIZE

PROMPTS = {
    1: "Hello",
    2: "The cache block slot async decode prefill stream latency router shard queue kernel tensor model",
    3: "a b c d e f",
    4: "Ünïcödé café 42 3.14 x = y + 1; def f(a, b):",
    5: "What time is it?",
    6: "Many people made things here, and they took the long way back home.",
    7: "the",
}
MAX_NEW = {1: 6, 2: 14, 3: 9, 4: 11, 5: 7, 6: 10, 7: 12}
LONG_PROMPT = " ".join(["the router sends a long prompt to the shard in several chunks of tokens"] * 12)


def new_request(i: int, reference, blocks: Blocks, **fields) -> pb.Request:
    text = PROMPTS[i]
    return request(i, text, blocks, len(reference.ids(text)), max_new_tokens=MAX_NEW[i], **fields)


async def decode_step(stub, cached: pb.CachedBatch | None, outputs: Outputs) -> pb.CachedBatch | None:
    if cached is None:
        return None
    response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
    outputs.add(response.generations)
    return await filter_finished(stub, response.batch if response.HasField("batch") else None, outputs)


async def test_greedy_matches_generate_across_prefill_decode_filter_concatenate(stub, reference):
    expected = {i: reference.greedy(text, MAX_NEW[i]) for i, text in PROMPTS.items()}
    blocks, out = Blocks(), Outputs()

    first = batch(10, [new_request(i, reference, blocks) for i in (1, 2, 3)])
    response = await stub.Prefill(pb.PrefillRequest(batch=first))
    out.add(response.generations)
    assert [g.request_id for g in response.generations] == [1, 2, 3]
    a = await filter_finished(stub, response.batch, out)
    a = await decode_step(stub, a, out)
    a = await decode_step(stub, a, out)

    # the router drops request 3 (its client went away); the order it lists the survivors is kept
    response = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=10, request_ids=[2, 1]))
    assert list(response.batch.request_ids) == [2, 1]
    a, dropped_after = response.batch, len(out.tokens[3])

    # a second batch joins through Decode([a, b]): one batch with a's id, b is gone
    response = await stub.Prefill(
        pb.PrefillRequest(batch=batch(11, [new_request(i, reference, blocks) for i in (4, 5)]))
    )
    out.add(response.generations)
    response = await stub.Decode(pb.DecodeRequest(batches=[a, response.batch]))
    out.add(response.generations)
    assert response.batch.id == 10 and list(response.batch.request_ids) == [2, 1, 4, 5]
    assert response.concat_ns > 0
    await expect_error(
        stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=11)])), grpc.StatusCode.NOT_FOUND
    )
    merged = await filter_finished(stub, response.batch, out)
    merged = await decode_step(stub, merged, out)

    # a third batch joins through Prefill(cached_batch): one forward computes its prompts and the decodes
    third = batch(12, [new_request(i, reference, blocks) for i in (6, 7)])
    decoding = list(merged.request_ids)
    response = await stub.Prefill(pb.PrefillRequest(batch=third, cached_batch=merged))
    out.add(response.generations)
    assert [g.request_id for g in response.generations] == [*decoding, 6, 7]
    assert response.batch.id == 10 and list(response.batch.request_ids) == [*decoding, 6, 7]
    cached = await filter_finished(stub, response.batch, out)
    await decode_until_done(stub, cached, out)

    for i in (1, 2, 4, 5, 6, 7):
        assert out.tokens[i] == expected[i], i
        assert out.finished[i].generated_tokens == len(expected[i])
        assert out.finished[i].text == reference.tokenizer.decode(expected[i], skip_special_tokens=True)
        assert not out.finished[i].HasField("seed")
    assert 3 not in out.finished and out.tokens[3] == expected[3][:dropped_after]


async def test_chunked_prefill_continues_on_decode_steps(stub, reference):
    blocks, out = Blocks(), Outputs()
    prompt_len = len(reference.ids(LONG_PROMPT))
    assert prompt_len > 2 * MAX_PREFILL_TOKENS
    expected_long = reference.greedy(LONG_PROMPT, 6)
    expected_short = reference.greedy(PROMPTS[5], MAX_NEW[5])

    # a short request decodes while the long one is prefilled 20 tokens first, then as TGI continues it
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(20, [new_request(5, reference, blocks)])))
    out.add(response.generations)
    long_request = request(
        50, LONG_PROMPT, blocks, prompt_len, max_new_tokens=6, chunk_len=20, prefill_logprobs=True
    )
    response = await stub.Prefill(
        pb.PrefillRequest(batch=batch(21, [long_request]), cached_batch=response.batch)
    )
    out.add(response.generations)
    assert [g.request_id for g in response.generations] == [5]

    # TGI's continuation: the rest of the prompt in chunks of the warmup budget minus the batch's other rows
    budget, done, chunks = MAX_PREFILL_TOKENS - 1, 20, []
    while prompt_len - done > 0:
        chunks.append(min(prompt_len - done, budget))
        done += chunks[-1]
    cached = response.batch
    for chunk in chunks:
        assert cached.current_tokens == 1 + chunk
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        out.add(response.generations)
        ids = [g.request_id for g in response.generations]
        assert ids == ([5, 50] if chunk == chunks[-1] else [5])
        cached = response.batch
    cached = await filter_finished(stub, cached, out)
    await decode_until_done(stub, cached, out)
    assert out.tokens[50] == expected_long
    assert out.tokens[5] == expected_short

    # prefill logprobs come once, with the first token, for the whole prompt: NaN then the model's own
    prefill = [
        g.prefill_tokens for g in out.generations if g.request_id == 50 and g.HasField("prefill_tokens")
    ]
    assert len(prefill) == 1
    ids = reference.ids(LONG_PROMPT)
    assert list(prefill[0].ids) == ids
    assert math.isnan(prefill[0].logprobs[0])
    want = reference.log_softmax(ids)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(list(prefill[0].logprobs[1:])), want, atol=1e-4)


async def test_prefill_logprobs_and_top_n_match_the_model(stub, reference):
    blocks = Blocks()
    text = PROMPTS[6]
    ids = reference.ids(text)
    message = request(60, text, blocks, len(ids), max_new_tokens=2, prefill_logprobs=True, top_n_tokens=5)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(30, [message])))
    (generation,) = response.generations
    log_probs = reference.log_softmax(ids)

    prefill = generation.prefill_tokens
    assert list(prefill.ids) == ids
    singles = [[i] for i in ids]
    texts = reference.tokenizer.batch_decode(
        singles, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    assert list(prefill.texts) == texts
    assert math.isnan(prefill.logprobs[0])
    want = log_probs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(list(prefill.logprobs[1:])), want, atol=1e-4)

    last = log_probs[-1]
    best = torch.topk(last, 5)
    (top,) = generation.top_tokens
    assert list(top.ids) == best.indices.tolist()
    assert torch.allclose(torch.tensor(list(top.logprobs)), best.values, atol=1e-4)
    assert list(generation.tokens.ids) == [best.indices[0].item()]
    assert abs(generation.tokens.logprobs[0] - best.values[0].item()) < 1e-4
    assert list(generation.tokens.is_special) == [False]

    # later tokens carry top tokens but no prefill tokens
    response = await stub.Decode(pb.DecodeRequest(batches=[response.batch]))
    (generation,) = response.generations
    assert not generation.HasField("prefill_tokens") and len(generation.top_tokens) == 1
    assert generation.generated_text.generated_tokens == 2
    assert not response.HasField("batch")


def sampled(seed: int) -> pb.NextTokenChooserParameters:
    return pb.NextTokenChooserParameters(
        temperature=1.5, top_k=0, top_p=1.0, typical_p=1.0, do_sample=True, seed=seed, repetition_penalty=1.0
    )


async def run_alone(stub, reference, request_id: int, parameters, chunk_len: int | None = None) -> list[int]:
    blocks, out = Blocks(), Outputs()
    text = PROMPTS[2]
    fields = {"chunk_len": chunk_len} if chunk_len else {}
    message = request(
        request_id, text, blocks, len(reference.ids(text)), 12, parameters, ignore_eos=True, **fields
    )
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(40 + request_id, [message])))
    out.add(response.generations)
    await decode_until_done(stub, await filter_finished(stub, response.batch, out), out)
    assert out.finished[request_id].seed == parameters.seed
    return out.tokens[request_id]


async def test_seeded_sampling_reproduces_whatever_the_batch(stub, reference):
    alone = await run_alone(stub, reference, 1, sampled(42))
    assert alone == await run_alone(stub, reference, 2, sampled(42))
    assert alone == await run_alone(stub, reference, 3, sampled(42), chunk_len=5)
    assert alone != await run_alone(stub, reference, 4, sampled(43))

    # the same request among other sampled and greedy rows, joined mid-way into a running batch
    blocks, out = Blocks(), Outputs()
    others = [new_request(i, reference, blocks, parameters=sampled(i)) for i in (1, 3)]
    response = await stub.Prefill(
        pb.PrefillRequest(batch=batch(48, [*others, new_request(4, reference, blocks)]))
    )
    out.add(response.generations)
    cached = await decode_step(stub, await filter_finished(stub, response.batch, out), out)
    text = PROMPTS[2]
    mine = request(9, text, blocks, len(reference.ids(text)), 12, sampled(42), ignore_eos=True)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(49, [mine]), cached_batch=cached))
    out.add(response.generations)
    await decode_until_done(stub, await filter_finished(stub, response.batch, out), out)
    assert out.tokens[9] == alone


async def test_stop_sequence_finishes_the_request(stub, reference):
    blocks, out = Blocks(), Outputs()
    text = PROMPTS[6]
    prompt_len = len(reference.ids(text))
    response = await stub.Prefill(
        pb.PrefillRequest(batch=batch(70, [request(70, text, blocks, prompt_len, 10)]))
    )
    out.add(response.generations)
    await decode_until_done(stub, await filter_finished(stub, response.batch, out), out)
    texts = [g.tokens.texts[0] for g in out.generations]
    full = "".join(texts)
    # stop where the 4th (or next non-empty) token's text ends, with the shortest suffix not seen before
    last = next(k for k in range(3, len(texts)) if texts[k])
    end = len("".join(texts[: last + 1]))
    stop = next(full[s:end] for s in range(end - 1, -1, -1) if full[s:end] not in full[: end - 1])

    out = Outputs()
    message = request(71, text, blocks, prompt_len, 10, stop=[stop])
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(71, [message])))
    out.add(response.generations)
    await decode_until_done(stub, await filter_finished(stub, response.batch, out), out)
    finished = out.finished[71]
    assert finished.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert finished.generated_tokens == last + 1
    assert finished.text.endswith(stop) and finished.text == full[:end]


async def test_long_decodes_match_generate_as_the_batch_shrinks(stub, reference):
    # Long enough to outgrow the CPU decode context's headroom more than once, with requests leaving at
    # different steps (each change makes the next step rebuild the context from the paged cache).
    lengths = {1: 20, 5: 75, 6: 150}
    expected = {i: reference.greedy(PROMPTS[i], n) for i, n in lengths.items()}
    blocks, out = Blocks(), Outputs()
    requests = [request(i, PROMPTS[i], blocks, len(reference.ids(PROMPTS[i])), n) for i, n in lengths.items()]
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(40, requests)))
    out.add(response.generations)
    await decode_until_done(stub, await filter_finished(stub, response.batch, out), out)
    assert out.tokens == expected


async def test_a_cached_prefix_is_reused_and_outputs_do_not_change(stub, reference):
    """Prefix caching: the second request is told its first blocks already hold its prompt's prefix (the
    first request's blocks, as the router's radix allocator hands them out) and computes only the rest."""
    shared = LONG_PROMPT  # several blocks
    first_text, second_text = shared + " first", shared + " and then a different ending"
    blocks, out = Blocks(), Outputs()
    first = new_request_text(71, first_text, reference, blocks, max_new_tokens=3)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(71, [first])))
    out.add(response.generations)
    await decode_until_done(stub, response.batch, out)
    assert out.tokens[71] == reference.greedy(first_text, 3)

    prompt = reference.ids(second_text)
    common = next(
        i for i, (a, b) in enumerate(zip(prompt, reference.ids(first_text), strict=False)) if a != b
    )
    whole = common // BLOCK_SIZE  # the router reuses whole blocks only
    tokens = len(prompt) + 6 - 1
    own_blocks, _ = blocks.allocate(tokens - whole * BLOCK_SIZE)
    block_ids = list(first.blocks[:whole]) + own_blocks
    slots = [b * BLOCK_SIZE + o for b in block_ids for o in range(BLOCK_SIZE)][:tokens]
    second = request(72, second_text, None, len(prompt), max_new_tokens=6, cache_len=whole * BLOCK_SIZE)
    second.blocks.extend(block_ids)
    second.slots.extend(slots)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(72, [second])))
    out.add(response.generations)
    await decode_until_done(stub, response.batch, out)
    assert whole >= 2
    assert out.tokens[72] == reference.greedy(second_text, 6)


def new_request_text(request_id: int, text: str, reference, blocks: Blocks, **fields) -> pb.Request:
    return request(request_id, text, blocks, len(reference.ids(text)), **fields)
