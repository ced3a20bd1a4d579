"""`--scheduler async`: a prefill loop and a decode loop sharing the shard, with pipelined Decode calls.

- The prefill loop admits queued requests within a per-step token budget (`prefill_step_tokens`), prefills
  them as their own batch (continuing chunked prompts step by step), then hands the batch to the decode loop.
- The decode loop keeps up to DEPTH Decode calls queued at the shard, so the shard never waits on the router:
  the next call is queued before the previous step's tokens go to clients. Prefilled batches join it with
  Decode([running, prefilled]) at the next step boundary.
- Its decisions (decode, wait, drain, filter) come from `decode_plan.plan_decode`, a pure function.
The shard serves calls one at a time in arrival order, so at most one prefill chunk runs between two decode
steps: that bounds how long a new prompt stalls the streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import grpc

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.types import CachedBatch, StepResult
from tgi_async.scheduler.admission import Budget
from tgi_async.scheduler.core import SchedulerCore
from tgi_async.scheduler.decode_plan import RequestView, plan_decode
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.request import InferError

logger = logging.getLogger(__name__)

DEPTH = 2  # Decode calls queued at the shard: one running, one waiting behind it


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[StepResult]
    batches: list[CachedBatch]  # what was sent: the decode batch first, then batches merged into it
    entries: list[Entry]


class AsyncScheduler(SchedulerCore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ready: deque[CachedBatch] = deque()  # prefilled batches waiting to join the decode batch
        self.decode_wakeup = asyncio.Event()
        self.decode_batch: CachedBatch | None = None  # the decode batch as of the last call sent
        self.vanished: set[int] = set()  # batch ids the shard dropped while calls naming them were queued

    def _loops(self):
        return [("prefill_loop", self._prefill_loop), ("decode_loop", self._decode_loop)]

    async def _reset(self, error: InferError) -> None:
        self.ready.clear()
        self.decode_batch = None
        await super()._reset(error)

    # -- prefill ---------------------------------------------------------------------------------------------
    def _prefill_budget(self) -> Budget:
        config, state = self.config, self.state
        held = sum(b.max_tokens for b in self.ready) + (
            self.decode_batch.max_tokens if self.decode_batch else 0
        )
        step_tokens = config.prefill_step_tokens
        if not self.info.support_chunking and state.waiting:
            # A prompt cannot be cut: let the first one in whole, at worst one over-budget prompt per step.
            step_tokens = max(step_tokens, state.waiting[0].request.input_length)
        max_size = None
        if config.max_batch_size is not None:
            max_size = max(config.max_batch_size - len(state.running), 0)
        return Budget(
            prefill_tokens=min(step_tokens, config.max_batch_prefill_tokens),
            total_tokens=max(config.max_batch_total_tokens - held, 0),
            max_size=max_size,
        )

    async def _prefill_loop(self) -> None:
        state, steps = self.state, self.steps
        while True:
            await self._wait_for_work()
            admitted = state.admit(self._prefill_budget())
            if admitted is None:
                # No room (blocks, tokens, batch size): wait until the decode loop frees some or news arrive.
                await self._wait_for_change()
                continue
            new_batch, entries, _ = admitted
            cached = await steps.prefill(new_batch)
            # Chunked prompts continue one shard step at a time (each bounded by the warmup prefill budget).
            while cached is not None and any(e.live and e.tokens_received == 0 for e in entries):
                cached = await steps.decode([cached])
            if cached is not None:
                self.ready.append(cached)
                self.decode_wakeup.set()

    # -- decode ----------------------------------------------------------------------------------------------
    def _views(self) -> list[RequestView]:
        if self.decode_batch is None:
            return []
        running = self.state.running
        views = []
        for request_id in self.decode_batch.request_ids:
            entry = running.get(request_id)
            if entry is None:
                continue
            projected = entry.tokens_received + entry.tokens_in_flight
            views.append(RequestView(request_id, projected, entry.max_new_tokens, entry.live))
        return views

    def _filter_threshold(self) -> int:
        if self.info.requires_padding:
            return 1  # padded shards keep computing finished rows: drop them at once
        size = self.decode_batch.size if self.decode_batch else 0
        return 1 if self.state.waiting else max(1, size // 8)

    async def _decode_loop(self) -> None:
        pending: deque[_InFlight] = deque()
        while True:
            decision = plan_decode(
                self._views(), len(pending), DEPTH, bool(self.ready), self._filter_threshold()
            )
            self.state.tracer.decode_decision(decision, len(pending))
            if decision.action == "decode":
                pending.append(self._send_decode())
                continue
            if decision.action == "filter":
                await self._filter(decision.remove)
                continue
            if not pending:
                self.vanished.clear()  # no queued call can name a dropped batch any more
            if decision.action == "idle":
                metrics.BATCH_CURRENT_SIZE.set(0)
                metrics.BATCH_CURRENT_MAX_TOKENS.set(0)
                self.decode_wakeup.clear()
                await self.decode_wakeup.wait()
                continue
            # wait / drain: take the oldest call's result (the next one is already queued at the shard)
            await self._receive(pending)

    def _send_decode(self) -> _InFlight:
        batches = ([self.decode_batch] if self.decode_batch else []) + list(self.ready)
        self.ready.clear()
        running = self.state.running
        entries = [running[i] for b in batches for i in b.request_ids if i in running]
        for entry in entries:
            entry.tokens_in_flight += 1
        first = batches[0]
        ids = tuple(i for b in batches for i in b.request_ids)
        # NOTE: the shard concatenates into the first batch's id; the next call only needs that id.
        self.decode_batch = CachedBatch(
            id=first.id,
            request_ids=ids,
            size=len(ids),
            max_tokens=sum(b.max_tokens for b in batches),
            current_tokens=len(ids),
        )
        metrics.BATCH_CURRENT_SIZE.set(len(ids))
        metrics.BATCH_CURRENT_MAX_TOKENS.set(self.decode_batch.max_tokens)
        if len(batches) > 1:
            metrics.BATCH_CONCAT.labels(reason="async_merge").inc()
        task = asyncio.create_task(self.steps.call("decode", self.client.decode(batches)))
        return _InFlight(task, batches, entries)

    async def _receive(self, pending: deque[_InFlight]) -> None:
        call = pending.popleft()
        try:
            result = await call.task
        except ShardError as exc:
            for entry in call.entries:
                entry.tokens_in_flight -= 1
            await self._call_failed(call, exc, pending)
            return
        for entry in call.entries:
            entry.tokens_in_flight -= 1
        self.steps.deliver(result)
        if result.batch is None:
            # Every request finished at this step: the shard dropped the batch. Calls queued behind this one
            # will find it gone (expected); their requests are all ended already.
            self.vanished.add(call.batches[0].id)
            if self.decode_batch is not None and self.decode_batch.id == call.batches[0].id:
                self.decode_batch = None
            for entry in call.entries:
                if not any(entry in other.entries for other in pending):
                    self.state.release(entry.id)
            self.wakeup.set()

    async def _call_failed(self, call: _InFlight, exc: ShardError, pending: deque[_InFlight]) -> None:
        first_id = call.batches[0].id
        not_found = exc.code == grpc.StatusCode.NOT_FOUND or "not found" in exc.details.lower()
        if not_found and first_id in self.vanished:
            # The batch vanished one step earlier (all its requests finished): expected with a pipeline.
            metrics.VANISHED_BATCH_CALLS.inc()
            merged = call.batches[1:]
            self.ready.extendleft(reversed(merged))  # merged batches were never touched: try them again
            for entry in call.entries:
                if entry.id not in {i for b in merged for i in b.request_ids}:
                    self.state.release(entry.id)
            return
        logger.error("decode failed: %s", exc, extra={"batch_id": first_id})
        # Everything queued behind it fails too; wait for those calls so no KV write races the cleanup.
        while pending:
            other = pending.popleft()
            try:
                await other.task
            except ShardError:
                pass
            for entry in other.entries:
                entry.tokens_in_flight -= 1
        ids = [i for b in call.batches for i in b.request_ids]
        await self.steps.fail(
            [b.id for b in call.batches], ids, InferError(exc.details or str(exc), "generation")
        )
        self.decode_batch = None
        self.wakeup.set()

    async def _filter(self, remove: tuple[int, ...]) -> None:
        batch = self.decode_batch
        assert batch is not None
        filtering = self.state.tracer.filtering(batch, remove=remove)
        running = self.state.running
        gone = set(remove)
        for request_id in remove:
            entry = running.get(request_id)
            if entry is not None and entry.live:
                # It reached max_new_tokens without the shard reporting an end: never leave a client hanging.
                entry.fail(InferError("Incomplete generation", "incomplete_generation"))
        keep = [i for i in batch.request_ids if i not in gone]
        try:
            if keep:
                self.decode_batch = await self.client.filter_batch(batch.id, keep)
            else:
                await self.client.clear_cache(batch.id)
                self.decode_batch = None
        except ShardError as exc:
            logger.error("filter failed: %s", exc, extra={"batch_id": batch.id})
            await self.steps.fail([batch.id], list(batch.request_ids), InferError(exc.details, "generation"))
            self.decode_batch = None
        filtering.done(self.decode_batch)
        for request_id in remove:
            entry = running.get(request_id)
            if entry is not None and entry.cancelled and not entry.ended:
                metrics.REQUEST_FAILURE.labels(err="dropped").inc()
            self.state.release(request_id)
        self.wakeup.set()  # freed blocks may admit queued requests
