"""Prefix caching: the radix allocator's contract (directly, and by hypothesis against a reference model), and
both schedulers reusing cached prefixes at the strict shard, whose KV ledger checks that every reused block
holds exactly that prefix."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scheduler.strict_client import length_tokenizer, serve_waves, strict
from tgi_async.scheduler.radix import RadixAllocator
from tgi_async.scheduler.request import GenerateRequest, SamplingParameters, StoppingParameters


def test_a_prefix_is_handed_out_after_its_request_left_and_only_in_whole_blocks() -> None:
    allocator = RadixAllocator(max_batch_total_tokens=16 * 40, block_size=4)
    prompt = list(range(100, 110))  # 10 tokens: 2 whole blocks
    first = allocator.allocate(14, prompt)
    assert first is not None and first.prefix_len == 0
    allocator.free(first, [*prompt, 7, 8])  # its KV holds the prompt and 2 tokens fed back: 3 whole blocks
    assert allocator.cached_blocks == 3
    second = allocator.allocate(20, [*prompt, 7, 99])  # shares 2 blocks and 3 tokens of the third
    assert second is not None and second.prefix_len == 8
    assert second.blocks[:2] == first.blocks[:2]
    other = allocator.allocate(8, [1, 2, 3, 4, 5])
    assert other is not None and other.prefix_len == 0


def test_cached_blocks_nobody_reads_are_evicted_least_recently_used_first() -> None:
    allocator = RadixAllocator(max_batch_total_tokens=4 * 5, block_size=4)  # blocks 1..4
    old, new = [1] * 8, [2] * 8
    for ids in (old, new):
        allocation = allocator.allocate(8, ids)
        assert allocation is not None
        allocator.free(allocation, ids)
    assert allocator.free_blocks == 0 and allocator.cached_blocks == 4
    allocator.allocate(4, new)  # touches (and holds) `new`'s first block
    taken = allocator.allocate(8, [3] * 8)  # needs 2 blocks: `old`'s go
    assert taken is not None and allocator.cached_blocks == 2
    assert allocator.allocate(4, old).prefix_len == 0  # type: ignore[union-attr]


def test_a_prefix_being_read_is_never_evicted() -> None:
    allocator = RadixAllocator(max_batch_total_tokens=4 * 4, block_size=4)  # blocks 1..3
    ids = [5] * 8
    first = allocator.allocate(8, ids)
    assert first is not None
    allocator.free(first, ids)
    reader = allocator.allocate(12, ids)  # reads both cached blocks, takes the last free one
    assert reader is not None and reader.prefix_len == 8
    assert allocator.allocate(4) is None  # nothing left: the blocks it reads stay
    allocator.free(reader)  # its KV was never computed: nothing more is cached
    assert allocator.free_blocks + allocator.cached_blocks == 3


def test_an_allocation_given_back_unused_caches_nothing() -> None:
    allocator = RadixAllocator(max_batch_total_tokens=4 * 8, block_size=4)
    allocation = allocator.allocate(12, [9] * 12)
    assert allocation is not None
    allocator.free(allocation)  # TGI would cache its prompt here, though its KV was never written
    assert allocator.cached_blocks == 0
    assert allocator.allocate(12, [9] * 12).prefix_len == 0  # type: ignore[union-attr]


operations = st.lists(
    st.tuples(
        st.sampled_from(["allocate", "free", "free_uncomputed"]),
        st.integers(0, 3),  # which prompt family
        st.integers(1, 20),  # prompt length
        st.integers(1, 12),  # new tokens
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations=operations, block_size=st.sampled_from([1, 2, 4, 16]), blocks=st.integers(3, 40))
def test_the_allocator_against_a_reference_model(operations, block_size: int, blocks: int) -> None:
    """Blocks are conserved, never handed to two holders, never freed twice; a reused prefix block holds
    exactly the tokens it was cached with (the model: what each block was written with)."""
    allocator = RadixAllocator(max_batch_total_tokens=block_size * blocks, block_size=block_size)
    live: list[tuple[object, list[int]]] = []
    written: dict[int, tuple[int, ...]] = {}  # block -> the tokens of the positions it holds, as cached
    for op, family, length, new in operations:
        prompt = [family * 1000 + i for i in range(length)]
        if op == "allocate":
            allocation = allocator.allocate(length + new, prompt)
            if allocation is None:
                continue
            assert allocation.prefix_len % block_size == 0 and allocation.prefix_len <= length
            for index in range(allocation.prefix_len // block_size):
                block = allocation.blocks[index]
                expected = tuple(prompt[index * block_size : (index + 1) * block_size])
                assert written[block] == expected, "a reused block holds other tokens"
            live.append((allocation, prompt + [7] * (new - 1)))
        elif live:
            allocation, kv = live.pop(family % len(live))
            cached = kv if op == "free" else None
            allocator.free(allocation, cached)  # type: ignore[arg-type]
            if cached:
                for index, block in enumerate(allocation.blocks[: len(cached) // block_size]):  # type: ignore[attr-defined]
                    written.setdefault(block, tuple(cached[index * block_size : (index + 1) * block_size]))
        holders = [b for a, _ in live for b in a.blocks]  # type: ignore[attr-defined]
        free = allocator._free
        assert len(free) == len(set(free)), "a block freed twice"
        assert not set(free) & set(holders), "a free block is also held"
        assert 0 not in free and 0 not in holders
        in_tree = allocator.cached_blocks
        assert len(free) + in_tree + len(set(holders) - tree_blocks(allocator)) == blocks - 1
        for block in set(written) - tree_blocks(allocator):
            del written[block]  # evicted or freed: its content no longer counts


def tree_blocks(allocator: RadixAllocator) -> set[int]:
    found, stack = set(), list(allocator.root.children.values())
    while stack:
        node = stack.pop()
        found.add(node.block)
        stack.extend(node.children.values())
    return found


def chat_request(system_tokens: int, turn: int, user: int) -> GenerateRequest:
    """A chat turn: the shared system prompt (family "sys"), then this user's turns."""
    length = system_tokens + 8 * turn + user
    text = f"sys/u{user}t{turn}:{length}"
    return GenerateRequest(
        inputs=text,
        input_length=length,
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=6),
        input_ids=tuple(length_tokenizer(text, 0, True)),
    )


async def test_both_policies_reuse_a_shared_system_prompt() -> None:
    """Chat turns: a first wave caches the 300-token system prompt, the turns after reuse it (the strict
    shard checks every reused block holds exactly those tokens)."""
    for policy in ("async", "sync"):
        for kind in ("flashinfer", "flashdecoding"):
            shard = strict(kind)
            first = [chat_request(300, 0, 0)]
            turns = [chat_request(300, turn, user) for turn in range(1, 3) for user in range(6)]
            waves = await serve_waves(shard, policy, [first, turns])
            assert all(how == "end" for wave in waves for _, how in wave)
            reused = [r.cache_len for r in list(shard.shard.received)[1:]]
            assert reused and min(reused) >= 256, (policy, kind, reused)  # the system prompt, whole blocks


async def test_prompt_logprobs_requests_neither_match_nor_cache() -> None:
    """As TGI: a request asking for its prompt's logprobs computes its prompt whole, and caches nothing."""
    shard = strict("flashinfer")
    plain = chat_request(64, 0, 0)
    logprobs = replace(plain, prefill_logprobs=True)
    await serve_waves(shard, "async", [[logprobs], [plain], [logprobs], [plain]])
    assert [r.cache_len for r in shard.shard.received] == [0, 0, 0, 63]
