"""plan_admission: TGI v3's next_batch rules for padded and block shards, chunking, deferral reasons."""

from __future__ import annotations

from tgi_async.scheduler.admission import Budget, Candidate, ShardShape, plan_admission
from tgi_async.scheduler.blocks import BlockAllocator

PADDED = ShardShape(requires_padding=True, block_size=1)
BLOCKS = ShardShape(requires_padding=False, block_size=16)
CHUNKING = ShardShape(requires_padding=False, block_size=16, support_chunking=True)


def test_padded_prefill_cost_is_batch_size_times_longest_prompt() -> None:
    queue = [Candidate(0, 10, 5), Candidate(1, 30, 5), Candidate(2, 5, 5)]
    plan = plan_admission(queue, Budget(prefill_tokens=60, total_tokens=1000), PADDED, None)
    # 2 * 30 = 60 fits; adding the third makes 3 * 30 = 90
    assert [a.id for a in plan.admitted] == [0, 1]
    assert plan.deferred == "prefill_budget"
    assert plan.prefill_tokens == 60
    assert plan.decode_tokens == 10
    assert all(a.allocation is None for a in plan.admitted)


def test_padded_total_token_budget_defers() -> None:
    queue = [Candidate(0, 10, 50), Candidate(1, 10, 50)]
    plan = plan_admission(queue, Budget(prefill_tokens=100, total_tokens=100), PADDED, None)
    assert [a.id for a in plan.admitted] == [0]
    assert plan.deferred == "token_budget"


def test_block_shard_allocates_prompt_plus_new_tokens_minus_one() -> None:
    allocator = BlockAllocator(1024, 16)
    plan = plan_admission([Candidate(7, 20, 13)], Budget(4096, 4096), BLOCKS, allocator)
    (admission,) = plan.admitted
    assert admission.allocation is not None
    assert len(admission.allocation.slots) == 20 + 13 - 1
    assert plan.deferred is None
    assert plan.max_blocks == 2


def test_block_shard_defers_on_blocks_without_overtaking() -> None:
    allocator = BlockAllocator(16 * 5, 16)  # 4 usable blocks
    queue = [Candidate(0, 40, 9), Candidate(1, 40, 9), Candidate(2, 1, 1)]
    plan = plan_admission(queue, Budget(4096, 4096), BLOCKS, allocator)
    assert [a.id for a in plan.admitted] == [0]
    assert plan.deferred == "blocks"  # request 2 would fit but must not overtake request 1
    assert allocator.free_blocks == 1


def test_chunking_cuts_the_last_prompt_to_the_budget() -> None:
    allocator = BlockAllocator(16 * 200, 16)
    queue = [Candidate(0, 20, 4), Candidate(1, 1000, 4), Candidate(2, 5, 4)]
    plan = plan_admission(queue, Budget(prefill_tokens=64, total_tokens=10_000), CHUNKING, allocator)
    assert [(a.id, a.chunk_len) for a in plan.admitted] == [(0, None), (1, 44)]
    assert plan.prefill_tokens == 64
    assert plan.deferred == "prefill_budget"


def test_without_chunking_an_oversize_prompt_waits() -> None:
    allocator = BlockAllocator(16 * 200, 16)
    plan = plan_admission([Candidate(0, 100, 4)], Budget(64, 10_000), BLOCKS, allocator)
    assert plan.admitted == ()
    assert plan.deferred == "prefill_budget"
    assert allocator.free_blocks == 199


def test_cancelled_requests_are_dropped_not_admitted() -> None:
    allocator = BlockAllocator(16 * 10, 16)
    queue = [Candidate(0, 10, 2, cancelled=True), Candidate(1, 10, 2)]
    plan = plan_admission(queue, Budget(4096, 4096), BLOCKS, allocator)
    assert plan.dropped == (0,)
    assert [a.id for a in plan.admitted] == [1]


def test_min_size_gives_blocks_back() -> None:
    allocator = BlockAllocator(16 * 10, 16)
    queue = [Candidate(0, 10, 2), Candidate(1, 10, 2)]
    plan = plan_admission(queue, Budget(4096, 4096, min_size=3), BLOCKS, allocator)
    assert plan.admitted == () and plan.deferred == "min_size"
    assert allocator.free_blocks == 9


def test_max_size_limits_the_batch() -> None:
    queue = [Candidate(i, 1, 1) for i in range(5)]
    plan = plan_admission(queue, Budget(4096, 4096, max_size=2), PADDED, None)
    assert [a.id for a in plan.admitted] == [0, 1]
    assert plan.deferred == "max_size"
    assert plan_admission(queue, Budget(4096, 4096, max_size=0), PADDED, None).admitted == ()


def test_prefill_budget_is_rounded_up_to_whole_blocks() -> None:
    allocator = BlockAllocator(16 * 100, 16)
    budget = Budget(prefill_tokens=17, total_tokens=100)  # rounds up to 32
    plan = plan_admission([Candidate(0, 30, 1), Candidate(1, 30, 1)], budget, CHUNKING, allocator)
    assert [(a.id, a.chunk_len) for a in plan.admitted] == [(0, None), (1, 2)]
    assert plan.prefill_tokens == 32
