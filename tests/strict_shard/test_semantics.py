"""The strict shard behaves as TGI v3.3.7's shards do (docs/strict-shard.md cites each rule), and fails loudly
where they would corrupt memory. Pure: StrictShard's RPC semantics on protobuf messages, no sockets."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tgi_async.proto import pb
from tgi_async.strict_shard import tokens
from tgi_async.strict_shard.kv import KvViolation
from tgi_async.strict_shard.profile import load_profile
from tgi_async.strict_shard.shard import StrictShard


def tokenize(text: str, truncate: int, add_special_tokens: bool) -> list[int]:
    ids = [(ord(word[0]) - ord("w")) * 1000 + 100 + i for i, word in enumerate(text.split())]
    return ids[-truncate:] if truncate else ids


def shard(kind: str = "flash", block_size: int = 1, speculate: int = 0, **profile) -> StrictShard:
    p = replace(load_profile("test"), kind=kind, block_size=block_size, speculate=speculate, **profile)
    s = StrictShard(p, tokenize, eos_token_id=2)
    warm = pb.Batch(id=0, requests=[request(0, 4, 1, slots=[])], size=1)
    s.warmup(pb.WarmupRequest(batch=warm, max_prefill_tokens=64, max_input_tokens=63, max_total_tokens=64))
    return s


def request(
    rid: int, words: int, max_new: int, slots: list[int] | None = None, word: str = "w", **fields
) -> pb.Request:
    slots = list(range(16 + 16 * rid, 16 + 16 * rid + words + max_new - 1)) if slots is None else slots
    blocks = sorted({s // 16 for s in slots}) if fields.pop("block_size", 1) == 16 else slots
    return pb.Request(
        id=rid,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=" ".join([word] * words))]),
        parameters=pb.NextTokenChooserParameters(temperature=1, top_p=1, typical_p=1, repetition_penalty=1),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=max_new),
        blocks=blocks,
        slots=slots,
        **fields,
    )


def prefill(s: StrictShard, batch_id: int, *requests: pb.Request, cached: pb.CachedBatch | None = None):
    message = pb.PrefillRequest(batch=pb.Batch(id=batch_id, requests=requests, size=len(requests)))
    if cached is not None:
        message.cached_batch.CopyFrom(cached)
    return s.prefill(message).response


def decode(s: StrictShard, *batch_ids: int):
    return s.decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=i) for i in batch_ids])).response


def test_info_follows_tgis_attention_rules() -> None:
    flashinfer = shard().info()
    assert (flashinfer.block_size, flashinfer.support_chunking, flashinfer.use_prefix_caching) == (
        1,
        True,
        True,
    )
    paged = shard(block_size=16).info()
    assert (paged.attention_impl, paged.support_chunking, paged.use_prefix_caching) == ("paged", False, False)
    assert not shard(speculate=2).info().support_chunking  # TGI: no chunking with speculation
    padded = shard(kind="padded").info()
    assert padded.requires_padding and not padded.support_chunking and padded.speculate == 0


def test_warmup_sizes_kv_after_the_profiled_forward_and_fills_tgis_defaults() -> None:
    s = StrictShard(load_profile("test"), tokenize, eos_token_id=2)
    answer = s.warmup(pb.WarmupRequest(batch=pb.Batch(id=0), max_prefill_tokens=256)).response
    profile = load_profile("test")
    assert answer.max_supported_total_tokens == int(profile.free_kv_bytes(0) // profile.kv_bytes_per_token)
    assert answer.max_total_tokens == min(answer.max_supported_total_tokens, profile.max_position_embeddings)
    assert answer.max_input_tokens == answer.max_total_tokens - 1
    padded = StrictShard(replace(profile, kind="padded"), tokenize, eos_token_id=2)
    warm = pb.WarmupRequest(
        batch=pb.Batch(id=0), max_prefill_tokens=8, max_input_tokens=4, max_total_tokens=9
    )
    answer = padded.warmup(warm).response
    assert not answer.HasField("max_supported_total_tokens") and answer.max_total_tokens == 9
    hungry = replace(profile, activation_bytes_per_token=1 << 30)
    with pytest.raises(RuntimeError, match="Not enough memory to handle"):
        StrictShard(hungry, tokenize, eos_token_id=2).warmup(
            pb.WarmupRequest(
                batch=pb.Batch(id=0, requests=[request(0, 4, 1, slots=[])]), max_prefill_tokens=4
            )
        )


def test_finished_rows_keep_running_until_filtered_and_the_batch_drops_when_all_stop_together() -> None:
    s = shard()
    first = prefill(s, 1, request(1, 3, 1, slots=list(range(16, 22))), request(2, 3, 3))
    assert [g.generated_text.generated_tokens for g in first.generations] == [1, 0]
    assert first.batch.request_ids == [1, 2]
    step = decode(s, 1)  # request 1 finished but is computed again, and says so again (TGI's length re-stop)
    assert [g.request_id for g in step.generations] == [1, 2]
    assert step.generations[0].generated_text.generated_tokens == 2
    last = decode(s, 1)
    assert not last.HasField("batch")  # both stopped in this step: TGI drops the batch
    with pytest.raises(ValueError, match=r"^Batch ID 1 not found in cache\.$"):
        decode(s, 1)


def test_a_finished_row_left_in_the_batch_writes_past_its_slots() -> None:
    s = shard()
    prefill(s, 1, request(1, 3, 2), request(2, 3, 10))  # request 1: 3 + 2 - 1 = 4 slots
    decode(s, 1)  # token 2: request 1 stops (feeds position 3, its last slot)
    with pytest.raises(KvViolation, match="wrote KV position 4 past its 4 slots"):
        decode(s, 1)  # the router did not filter it: TGI's shard would write the next request's slot


def test_filter_batch_errors_lose_the_batch() -> None:
    s = shard()
    prefill(s, 1, request(1, 3, 5), request(2, 3, 5), request(3, 3, 5))
    with pytest.raises(KeyError) as unknown:
        s.filter_batch(pb.FilterBatchRequest(batch_id=1, request_ids=[1, 99]))
    assert str(unknown.value.args[0]) == "99"  # TGI's message: the bare id
    with pytest.raises(ValueError, match="not found"):
        decode(s, 1)
    prefill(s, 2, request(4, 3, 5), request(5, 3, 5))
    with pytest.raises(ValueError, match="Batch must have at least one request"):
        s.filter_batch(pb.FilterBatchRequest(batch_id=2, request_ids=[]))
    assert s.cache == {}
    prefill(s, 3, request(6, 3, 5), request(7, 3, 5))
    same = s.filter_batch(pb.FilterBatchRequest(batch_id=3, request_ids=[7, 6])).batch
    assert list(same.request_ids) == [6, 7]  # as many ids as rows: unchanged, unread (TGI)


def test_decode_pops_batches_one_by_one() -> None:
    s = shard()
    prefill(s, 1, request(1, 3, 5))
    with pytest.raises(ValueError, match="Batch ID 9 not found"):
        decode(s, 1, 9)
    assert 1 not in s.cache  # popped before the unknown id was met: lost, as in TGI


def test_chunks_continue_within_warmups_budget_last_request_first() -> None:
    s = shard()  # Warmup: max_prefill_tokens 64
    running = prefill(s, 1, request(1, 3, 20))
    long = request(2, 200, 5, slots=list(range(512, 512 + 204)), chunk_len=10)
    other = request(3, 100, 5, slots=list(range(1024, 1024 + 104)), chunk_len=10)
    joined = prefill(s, 2, long, other, cached=running.batch)
    assert joined.batch.id == 1  # the cached batch's id survives
    # budget 64 - (3 - 1) = 62, handed out from the last request back: request 3 gets 62, request 2 at least 1
    assert joined.batch.current_tokens == 1 + 1 + 62
    assert all(g.request_id == 1 for g in joined.generations)  # no Generation mid-prompt


def test_cached_batch_is_ignored_without_chunking() -> None:
    s = shard(block_size=16)
    first = prefill(s, 1, request(1, 3, 5, block_size=16))
    second = prefill(s, 2, request(2, 3, 5, block_size=16), cached=first.batch)
    assert second.batch.id == 2 and set(s.cache) == {1, 2}


def test_speculation_returns_up_to_1_plus_s_tokens_and_writes_as_many_slots() -> None:
    s = shard(speculate=2, accept_rate=1.0)
    prefill(s, 1, request(1, 3, 9, slots=list(range(16, 16 + 3 + 9 + 2 - 1))))
    step = decode(s, 1)
    assert list(step.generations[0].tokens.ids) == [tokens.token_id(g) for g in (2, 3, 4)]
    decode(s, 1)
    last = decode(s, 1)  # tokens 8, 9, 10 accepted: cut at 9, its limit; the batch is dropped
    assert list(last.generations[0].tokens.ids) == [tokens.token_id(8), tokens.token_id(9)]
    assert not last.HasField("batch")


def test_one_text_chunk_or_the_shard_exits() -> None:
    bad = request(1, 3, 5)
    bad.input_chunks.chunks.append(pb.InputChunk(text="second"))
    with pytest.raises(NotImplementedError, match="more than one text chunk"):
        prefill(shard(), 1, bad)


def test_kv_checks_double_allocation_block_0_and_prefix_contents() -> None:
    s = shard()
    prefill(s, 1, request(1, 4, 5, slots=[20, 21, 22, 23, 24, 25, 26, 27]))
    with pytest.raises(KvViolation, match="two requests were given the same KV slot"):
        prefill(s, 2, request(2, 4, 5, slots=[30, 21, 32, 33, 34, 35, 36, 37], word="x"))
    with pytest.raises(KvViolation, match="block 0 is reserved"):
        prefill(shard(block_size=16), 3, request(3, 2, 2, slots=[0, 1, 2], block_size=16))
    # request 4 has the same prompt as request 1: its first 3 positions may come from request 1's slots
    s2 = shard()
    prefill(s2, 1, request(1, 4, 1, slots=[20, 21, 22, 23]))
    reuse = request(4, 4, 3, slots=[20, 21, 22, 40, 41, 42], cache_len=3)
    assert prefill(s2, 2, reuse).generations[0].request_id == 4
    wrong = request(5, 4, 3, slots=[20, 50, 22, 43, 44, 45], cache_len=3)
    with pytest.raises(KvViolation, match="does not hold its prefix"):
        prefill(s2, 3, wrong)


def test_a_forward_larger_than_warmups_is_an_out_of_memory() -> None:
    s = shard(speculate=1)  # max_prefill_tokens 64: at most 32 decoding requests of 2 tokens
    requests = [request(i, 1, 3, slots=list(range(16 + 4 * i, 19 + 4 * i + 1))) for i in range(40)]
    prefill(s, 1, *requests)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        decode(s, 1)


def test_prompt_logprobs_only_with_request_logprobs_on_flash() -> None:
    asked = request(1, 3, 2, prefill_logprobs=True)
    assert not prefill(shard(), 1, asked).generations[0].HasField("prefill_tokens")
    s = shard()
    s.request_logprobs = True
    tokens_ = prefill(s, 1, asked).generations[0].prefill_tokens
    assert list(tokens_.ids) == [100, 101, 102] and math.isnan(tokens_.logprobs[0])
