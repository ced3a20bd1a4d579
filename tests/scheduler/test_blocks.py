"""BlockAllocator: TGI's allocation semantics (block 0 reserved, slots per token, window repeats)."""

from __future__ import annotations

from tgi_async.scheduler.blocks import BlockAllocator


def test_block_zero_is_never_handed_out_and_slots_follow_blocks() -> None:
    allocator = BlockAllocator(max_batch_total_tokens=64, block_size=16)  # blocks 0..3, 1..3 usable
    assert allocator.free_blocks == 3
    allocation = allocator.allocate(20)
    assert allocation is not None
    assert 0 not in allocation.blocks
    assert len(allocation.blocks) == 2
    assert len(allocation.slots) == 20
    expected = [b * 16 + o for b in allocation.blocks for o in range(16)][:20]
    assert list(allocation.slots) == expected


def test_allocation_fails_when_blocks_run_out_and_free_returns_them() -> None:
    allocator = BlockAllocator(max_batch_total_tokens=64, block_size=16)
    first = allocator.allocate(32)
    assert first is not None and allocator.free_blocks == 1
    assert not allocator.can_allocate(17)
    assert allocator.allocate(17) is None
    allocator.free(first)
    assert allocator.free_blocks == 3
    assert allocator.can_allocate(48)


def test_sliding_window_reuses_blocks() -> None:
    allocator = BlockAllocator(max_batch_total_tokens=160, block_size=16, window_size=32)
    allocation = allocator.allocate(80)
    assert allocation is not None
    assert len(allocation.blocks) == 2  # the window caps the blocks
    assert len(allocation.slots) == 80  # slots wrap around the window's blocks
    assert set(allocation.slots) == {b * 16 + o for b in allocation.blocks for o in range(16)}
