"""Prefix caching: KV blocks kept in a tree of token ids after their requests end, handed to the next request
whose prompt starts with the same tokens (TGI v3's RadixAllocator, backends/v3/src/radix.rs).

A node is one full block: its key is the `block_size` token ids whose KV the block holds, given the tokens of
its ancestors. A node's reference count is its children plus the live allocations whose cached prefix ends
there, so a block is evicted (least recently used leaf first) only when no request reads it and no cached
prefix runs through it. When a request leaves, the whole blocks of what its KV holds (the prompt, and the
generated tokens fed back) join the tree unless it has them already; its other blocks are freed.

Unlike TGI's, an allocation given back before its request was computed (admission changed its mind, a call
failed first) caches nothing: its blocks hold no KV.

Pure and synchronous: the scheduler calls it from its own task only.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from tgi_async.scheduler.blocks import BlockAllocation, expand_slots


@dataclass(eq=False, slots=True)
class _Node:
    key: tuple[int, ...]  # the block's tokens (() for the root)
    block: int  # -1 for the root
    parent: _Node | None
    children: dict[tuple[int, ...], _Node] = field(default_factory=dict)
    refs: int = 0  # children + live allocations whose cached prefix ends here
    last_used: int = 0  # logical time


@dataclass(frozen=True, slots=True)
class _Live:
    node: _Node  # where the allocation's cached prefix ends (the root: none)
    cached_blocks: int


class RadixAllocator:
    """`BlockAllocator`'s interface, plus `prefix_ids` to match at `allocate` and `cached_ids` at `free`."""

    def __init__(self, max_batch_total_tokens: int, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.total_blocks = max_batch_total_tokens // block_size
        # NOTE: block 0 is reserved (TGI's shards use it for padding and health checks).
        self._free: list[int] = list(range(1, self.total_blocks))
        self.root = _Node((), -1, None)
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._order = itertools.count()
        self._evictable: list[tuple[int, int, _Node]] = []  # (last_used, order, leaf); stale ones skipped
        self.cached_blocks = 0  # blocks the tree holds

    @property
    def free_blocks(self) -> int:
        """Blocks on the free list (cached blocks nobody reads come back from the tree on demand)."""
        return len(self._free)

    def blocks_needed(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- allocate / free -------------------------------------------------------------------------------------
    def allocate(self, tokens: int, prefix_ids: Sequence[int] | None = None) -> BlockAllocation | None:
        """Blocks and slots for `tokens` KV entries; the first blocks are those of the longest cached prefix
        of `prefix_ids` (whole blocks). None when not enough blocks are free even after evicting every
        cached block nobody reads."""
        limit = self.blocks_needed(tokens) * self.block_size  # a prefix longer than the request is not read
        node, cached = self._match(prefix_ids[:limit]) if prefix_ids else (self.root, [])
        self._ref(node, +1)  # before evicting: the matched prefix must stay
        needed = self.blocks_needed(tokens) - len(cached)
        if needed > len(self._free):
            self._evict(needed - len(self._free))
        if needed > len(self._free):
            self._ref(node, -1)
            return None
        new = self._free[len(self._free) - needed :]
        del self._free[len(self._free) - needed :]
        blocks = (*cached, *new)
        allocation = BlockAllocation(
            blocks=blocks,
            slots=expand_slots(blocks, self.block_size, tokens),
            prefix_len=len(cached) * self.block_size,
            allocation_id=next(self._ids),
        )
        self._live[allocation.allocation_id] = _Live(node, len(cached))
        return allocation

    def free(self, allocation: BlockAllocation, cached_ids: Sequence[int] | None = None) -> None:
        """The request left. `cached_ids`: the tokens its KV holds, position by position (None: nothing,
        it was never computed). Their whole blocks join the tree; the others are freed."""
        live = self._live.pop(allocation.allocation_id)
        self._ref(live.node, -1)
        blocks, kept = allocation.blocks, set()
        if cached_ids:
            whole = min(len(cached_ids) // self.block_size, len(blocks))
            kept = self._insert(cached_ids[: whole * self.block_size], blocks[:whole])
        for index in range(live.cached_blocks, len(blocks)):  # the reused prefix stays on the tree
            if index not in kept:
                self._free.append(blocks[index])

    # -- the tree --------------------------------------------------------------------------------------------
    def _match(self, ids: Sequence[int]) -> tuple[_Node, list[int]]:
        """The deepest node whose path is a prefix of `ids` in whole blocks, and the path's blocks."""
        bs, node, blocks = self.block_size, self.root, []
        now = next(self._clock)
        for start in range(0, len(ids) - bs + 1, bs):
            child = node.children.get(tuple(ids[start : start + bs]))
            if child is None:
                break
            node = child
            node.last_used = now
            blocks.append(node.block)
        return node, blocks

    def _insert(self, ids: Sequence[int], blocks: Sequence[int]) -> set[int]:
        """Put `blocks` (holding `ids`) on the tree; returns the indices of the blocks it takes (those whose
        tokens it did not hold already)."""
        bs, node, taken = self.block_size, self.root, set()
        now = next(self._clock)
        for index, block in enumerate(blocks):
            key = tuple(ids[index * bs : (index + 1) * bs])
            child = node.children.get(key)
            if child is None:
                child = _Node(key, block, node)
                node.children[key] = child
                self._ref(node, +1)
                self.cached_blocks += 1
                taken.add(index)
            child.last_used = now
            self._push_if_evictable(child)
            node = child
        return taken

    def _ref(self, node: _Node, delta: int) -> None:
        if node is self.root:
            return
        node.refs += delta
        assert node.refs >= 0, "reference count below zero"
        self._push_if_evictable(node)

    def _push_if_evictable(self, node: _Node) -> None:
        if node.refs == 0:  # a leaf nobody reads
            heapq.heappush(self._evictable, (node.last_used, next(self._order), node))

    def _evict(self, count: int) -> None:
        """Free up to `count` cached blocks, least recently used leaves first (a parent may follow)."""
        freed = 0
        while freed < count and self._evictable:
            last_used, _, node = heapq.heappop(self._evictable)
            if node.refs or node.parent is None or last_used != node.last_used:
                continue  # stale: read again, already evicted, or touched since (a newer entry exists)
            parent = node.parent
            del parent.children[node.key]
            node.parent = None
            self._free.append(node.block)
            self.cached_blocks -= 1
            freed += 1
            self._ref(parent, -1)
