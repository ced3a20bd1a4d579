"""The scheduler's state: the waiting queue, requests in shard batches, KV blocks, id counters.

One owner: every mutation runs on the event loop thread without an await in between, so the loops and the
API (append, cancel) never see it half-changed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from tgi_async import metrics
from tgi_async.client.types import NewBatch, NewRequest
from tgi_async.scheduler.admission import AdmissionPlan, Budget, Candidate, ShardShape, plan_admission
from tgi_async.scheduler.blocks import BlockAllocator
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.radix import RadixAllocator
from tgi_async.scheduler.request import GenerateRequest
from tgi_async.telemetry.scheduler import scheduler_tracer


class SchedulerState:
    def __init__(
        self, shape: ShardShape, max_batch_total_tokens: int, window_size: int | None = None
    ) -> None:
        self.shape = shape
        self.max_batch_total_tokens = max_batch_total_tokens
        self.allocator: BlockAllocator | RadixAllocator | None = None
        if shape.prefix_caching and not shape.requires_padding:
            self.allocator = RadixAllocator(max_batch_total_tokens, shape.block_size)
        elif not shape.requires_padding:
            self.allocator = BlockAllocator(max_batch_total_tokens, shape.block_size, window_size)
        self.waiting: deque[Entry] = deque()
        self.running: dict[int, Entry] = {}  # request id -> entry, for requests inside a shard batch
        self._next_request_id = 0
        self._next_batch_id = 0
        self.tracer = scheduler_tracer(self)  # spans for every decision (no-op unless tracing is on)

    @property
    def queue_size(self) -> int:
        return len(self.waiting)

    def kv_cache_usage(self) -> float:
        """Fraction of the KV cache the running requests hold (cached prefixes nobody reads count as free:
        they are evicted on demand); padded shards: their reserved tokens over the batch's token budget."""
        if self.allocator is None:
            reserved = sum(e.request.input_length + e.max_new_tokens for e in self.running.values())
            return min(reserved / self.max_batch_total_tokens, 1.0)
        held = {b for e in self.running.values() if e.allocation is not None for b in e.allocation.blocks}
        return len(held) / max(self.allocator.total_blocks - 1, 1)  # block 0 is never handed out

    def adapters(self) -> tuple[set[str], set[str]]:
        """The LoRA adapters the running and the waiting requests ask for."""
        running = {e.request.adapter_id for e in self.running.values() if e.request.adapter_id}
        waiting = {e.request.adapter_id for e in self.waiting if e.request.adapter_id}
        return running, waiting

    def append(self, request: GenerateRequest) -> Entry:
        entry = Entry(id=self._next_request_id, request=request)
        self._next_request_id += 1
        self.waiting.append(entry)
        self.tracer.queued(entry)
        metrics.QUEUE_SIZE.set(len(self.waiting))
        return entry

    def admit(self, budget: Budget) -> tuple[NewBatch, list[Entry], AdmissionPlan] | None:
        """Move the requests that fit `budget` from the queue into a new batch (None if none fit)."""
        if not self.waiting:
            return None
        # NOTE: lazily: the policy stops at the first request that does not fit, so a round costs what it
        # admits, not the queue's length (it runs every step while requests wait).
        matching = self.shape.prefix_caching
        candidates = (
            Candidate(
                e.id,
                e.request.input_length,
                e.max_new_tokens,
                cancelled=e.cancelled,
                prefix_ids=e.prompt_ids() if matching else None,
            )
            for e in self.waiting
        )
        plan = plan_admission(candidates, budget, self.shape, self.allocator)
        self.tracer.admission(plan, budget, self._next_batch_id)
        by_id = self._take({a.id for a in plan.admitted} | set(plan.dropped))
        for request_id in plan.dropped:
            by_id[request_id].ended = True
            metrics.REQUEST_FAILURE.labels(err="dropped").inc()
        metrics.QUEUE_SIZE.set(len(self.waiting))
        if not plan.admitted:
            return None
        now = time.monotonic()
        entries = []
        requests = []
        for admission in plan.admitted:
            entry = by_id[admission.id]
            entry.allocation = admission.allocation
            entry.started_at = now
            self.running[entry.id] = entry
            entries.append(entry)
            allocation = admission.allocation
            requests.append(
                NewRequest(
                    id=entry.id,
                    request=entry.request,
                    blocks=allocation.blocks if allocation else (),
                    slots=allocation.slots if allocation else (),
                    cache_len=admission.cache_len,
                    chunk_len=admission.chunk_len,
                )
            )
            if matching:
                metrics.PREFIX_CACHED_TOKENS.observe(admission.cache_len)
        batch = NewBatch(
            id=self._next_batch_id,
            requests=tuple(requests),
            max_tokens=plan.prefill_tokens + plan.decode_tokens,
            max_blocks=plan.max_blocks,
        )
        self._next_batch_id += 1
        metrics.BATCH_NEXT_SIZE.observe(len(requests))
        return batch, entries, plan

    def rebatch(self, batch: NewBatch, request_ids: Sequence[int]) -> NewBatch:
        """`request_ids` of `batch`, with the same KV placement, in a batch of a new id (a failed Prefill's
        requests tried again: a shard never caches a failed batch, and an id is never sent twice)."""
        keep = set(request_ids)
        requests = tuple(r for r in batch.requests if r.id in keep)
        if self.shape.requires_padding or self.allocator is None:  # padded: all as long as the longest
            prompt_tokens = len(requests) * max(r.request.input_length for r in requests)
        else:
            prompt_tokens = sum(r.chunk_len or r.request.input_length - r.cache_len for r in requests)
        new_batch = NewBatch(
            id=self._next_batch_id,
            requests=requests,
            max_tokens=prompt_tokens + sum(r.request.stopping.max_new_tokens for r in requests),
            max_blocks=max(len(r.blocks) for r in requests),
        )
        self._next_batch_id += 1
        return new_batch

    def _take(self, ids: set[int]) -> dict[int, Entry]:
        """Remove `ids` from the queue; they all lie in the prefix the policy read."""
        taken: dict[int, Entry] = {}
        skipped: list[Entry] = []
        while len(taken) < len(ids):
            entry = self.waiting.popleft()
            if entry.id in ids:
                taken[entry.id] = entry
            else:
                skipped.append(entry)
        self.waiting.extendleft(reversed(skipped))
        return taken

    def release(self, request_id: int, kv_intact: bool = True) -> None:
        """The request left the shards: forget it and free its KV blocks (with prefix caching, what its KV
        holds stays cached unless `kv_intact` is False: after a failure nobody knows)."""
        self.tracer.released(request_id)
        entry = self.running.pop(request_id, None)
        if entry is not None and entry.allocation is not None and self.allocator is not None:
            self.allocator.free(entry.allocation, entry.kv_ids() if kv_intact else None)
            entry.allocation = None
