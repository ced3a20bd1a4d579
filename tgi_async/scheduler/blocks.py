"""KV block accounting for block-based shards: the router owns placement, the shard writes where told.

`BlockAllocator` hands out free blocks; `radix.RadixAllocator` (shards with prefix caching) also keeps the
blocks of ended requests to hand their prefixes out again. Both: `allocate(tokens, prefix_ids)`,
`free(allocation, cached_ids)`, `free_blocks`, `total_blocks`, `block_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockAllocation:
    blocks: tuple[int, ...]  # KV blocks one request uses (the first may be a cached prefix, shared)
    slots: tuple[int, ...]  # one KV slot per token, block * block_size + offset
    prefix_len: int = 0  # leading tokens whose KV the first blocks already hold (prefix caching)
    allocation_id: int = 0  # the allocator's handle for it


def expand_slots(blocks: Sequence[int], block_size: int, tokens: int, repeats: int = 1) -> tuple[int, ...]:
    """The first `tokens` slots of `blocks` (each block's slots in order), `blocks` taken `repeats` times."""
    slots: list[int] = []
    for block in tuple(blocks) * repeats:
        start = block * block_size
        slots.extend(range(start, start + min(block_size, tokens - len(slots))))
        if len(slots) == tokens:
            break
    return tuple(slots)


class BlockAllocator:
    """Free-list allocator with TGI's semantics: block 0 is never handed out, a sliding window repeats blocks.

    Pure and synchronous: the scheduler calls it from its own task only.
    """

    def __init__(self, max_batch_total_tokens: int, block_size: int, window_size: int | None = None) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.window_size = window_size
        self.total_blocks = max_batch_total_tokens // block_size
        # NOTE: block 0 is reserved (TGI's shards use it for padding and health checks).
        self._free: list[int] = list(range(1, self.total_blocks))

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, tokens: int) -> int:
        if self.window_size is not None:
            tokens = min(tokens, self.window_size)
        return -(-tokens // self.block_size)

    def can_allocate(self, tokens: int) -> bool:
        return self.blocks_needed(tokens) <= len(self._free)

    def allocate(self, tokens: int, prefix_ids: Sequence[int] | None = None) -> BlockAllocation | None:
        """Blocks and slots for `tokens` KV entries, or None when not enough blocks are free (no prefix
        caching: `prefix_ids` is not read)."""
        needed = self.blocks_needed(tokens)
        if needed > len(self._free):
            return None
        blocks = self._free[len(self._free) - needed :]
        del self._free[len(self._free) - needed :]
        repeats = 1 if self.window_size is None else -(-tokens // self.window_size)
        return BlockAllocation(tuple(blocks), expand_slots(blocks, self.block_size, tokens, repeats))

    def free(self, allocation: BlockAllocation, cached_ids: Sequence[int] | None = None) -> None:
        self._free.extend(allocation.blocks)
