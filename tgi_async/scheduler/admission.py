"""Which queued requests enter the next prefill: TGI v3's `next_batch` rules as a pure function.

The function reads the queue front to back and stops at the first request that does not fit, so requests are
served in arrival order (no overtaking). It returns a plan (plain data, including why the rest waits); the
caller executes it. The only state it touches is the block allocator, whose allocations it hands out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tgi_async.scheduler.blocks import BlockAllocation, BlockAllocator
from tgi_async.scheduler.radix import RadixAllocator

DeferReason = Literal["prefill_budget", "token_budget", "blocks", "max_size", "min_size"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A queued request as the policy sees it."""

    id: int
    input_length: int  # prompt tokens
    max_new_tokens: int
    cancelled: bool = False  # the client left while it waited
    prefix_ids: tuple[int, ...] | None = None  # prompt ids to match against cached prefixes (prefix caching)


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one admission round (TGI's next_batch arguments)."""

    prefill_tokens: int  # prompt tokens this prefill may compute
    total_tokens: int  # prompt + new tokens the batch may grow to (padded shards)
    min_size: int | None = None  # admit nothing unless at least this many fit
    max_size: int | None = None  # admit at most this many


@dataclass(frozen=True, slots=True)
class ShardShape:
    """What the shard kind changes in admission."""

    requires_padding: bool  # padded batches: prompt cost is max_input_length * batch size, no blocks
    block_size: int
    speculate: int = 0
    support_chunking: bool = False  # the last admitted prompt may be cut to fill the prefill budget
    extra_slots: int = 0  # KV slots per request beyond TGI's (pipelined schedulers run a step ahead)
    prefix_caching: bool = False  # the shard reuses cached prefix blocks (Info.use_prefix_caching)


@dataclass(frozen=True, slots=True)
class Admission:
    id: int
    allocation: BlockAllocation | None  # None on padded shards
    chunk_len: int | None  # prompt tokens to compute now when the prompt is cut; None = all of it
    cache_len: int = 0  # prompt tokens whose KV a cached prefix holds: not computed again


@dataclass(frozen=True, slots=True)
class AdmissionPlan:
    admitted: tuple[Admission, ...]  # in queue order
    dropped: tuple[int, ...]  # cancelled while queued: leave the queue without a prefill
    deferred: DeferReason | None  # why the first request left in the queue waits (None: queue drained)
    prefill_tokens: int  # prompt tokens the prefill computes
    decode_tokens: int  # new tokens the admitted requests may still generate (padded accounting)
    max_blocks: int  # most blocks held by one admitted request


def plan_admission(
    queue: Iterable[Candidate],
    budget: Budget,
    shape: ShardShape,
    allocator: BlockAllocator | RadixAllocator | None,
) -> AdmissionPlan:
    """Admit requests from the front of `queue` while they fit `budget`. Allocates their KV blocks.

    `queue` is read once, front to back, and no further than the first request that does not fit.
    """
    admitted: list[Admission] = []
    dropped: list[int] = []
    deferred: DeferReason | None = None
    prefill_tokens = decode_tokens = max_blocks = max_input_length = 0
    if budget.max_size == 0:
        return AdmissionPlan((), (), "max_size", 0, 0, 0)
    if budget.prefill_tokens <= 0:
        return AdmissionPlan((), (), "prefill_budget", 0, 0, 0)
    if budget.total_tokens <= 0:
        return AdmissionPlan((), (), "token_budget", 0, 0, 0)
    # Prefill budgets are whole blocks (TGI pads them so chunks end on block boundaries).
    prefill_budget = -(-budget.prefill_tokens // shape.block_size) * shape.block_size

    for candidate in queue:
        if candidate.cancelled:
            dropped.append(candidate.id)
            continue
        if budget.max_size is not None and len(admitted) == budget.max_size:
            deferred = "max_size"
            break
        if shape.requires_padding or allocator is None:
            max_input_length = max(max_input_length, candidate.input_length)
            padded_prefill = (len(admitted) + 1) * max_input_length
            padded_decode = decode_tokens + candidate.max_new_tokens
            if padded_prefill > prefill_budget:
                deferred = "prefill_budget"
                break
            if padded_prefill + padded_decode + shape.speculate > budget.total_tokens:
                deferred = "token_budget"
                break
            prefill_tokens, decode_tokens = padded_prefill, padded_decode
            admitted.append(Admission(candidate.id, None, None))
            continue

        # Block shards: KV for the prompt and every new token but the last (never fed back).
        tokens = candidate.input_length + candidate.max_new_tokens + shape.speculate - 1 + shape.extra_slots
        allocation = allocator.allocate(tokens, candidate.prefix_ids)
        if allocation is None:
            deferred = "blocks"
            break
        # NOTE: as TGI, one prompt token at least is computed: its logits give the first new token
        cache_len = min(allocation.prefix_len, candidate.input_length - 1)
        prompt_tokens = candidate.input_length - cache_len
        chunk_len = None
        if prefill_tokens + prompt_tokens > prefill_budget:
            room = prefill_budget - prefill_tokens
            if not shape.support_chunking or room <= 0:
                allocator.free(allocation)  # never computed: it caches nothing
                deferred = "prefill_budget"
                break
            chunk_len = room  # NOTE: only the last admitted request is cut; nothing else fits after it
        max_blocks = max(max_blocks, len(allocation.blocks))
        admitted.append(Admission(candidate.id, allocation, chunk_len, cache_len))
        prefill_tokens += prompt_tokens if chunk_len is None else chunk_len
        decode_tokens += candidate.max_new_tokens
        if chunk_len is not None:
            deferred = "prefill_budget"
            break

    if budget.min_size is not None and admitted and len(admitted) < budget.min_size:
        # Too small to be worth interrupting the running batch: give everything back.
        if allocator is not None:
            for admission in admitted:
                if admission.allocation is not None:
                    allocator.free(admission.allocation)
        return AdmissionPlan((), tuple(dropped), "min_size", 0, 0, 0)
    return AdmissionPlan(tuple(admitted), tuple(dropped), deferred, prefill_tokens, decode_tokens, max_blocks)
