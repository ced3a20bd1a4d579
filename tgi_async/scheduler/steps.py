"""Shard steps with their bookkeeping: call, deliver tokens, filter finished requests, free, measure.

Shared by the `sync` and `async` policies; the loops decide *when*, this file does *how*.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import CachedBatch, NewBatch, StepResult
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.request import InferError, InferEvent
from tgi_async.scheduler.state import SchedulerState
from tgi_async.telemetry.scheduler import FilterHandle

logger = logging.getLogger(__name__)
Method = Literal["prefill", "decode"]


@dataclass(slots=True)
class FilterCall:
    """A FilterBatch (or ClearCache, when `keep` is empty) sent to the shards and not yet accounted for."""

    batch: CachedBatch
    keep: tuple[int, ...]
    task: asyncio.Future[CachedBatch | None]
    span: FilterHandle


class StepRunner:
    def __init__(self, client: ShardedClient, state: SchedulerState) -> None:
        self.client = client
        self.state = state
        self.last_success = 0.0  # monotonic time of the last step that worked (health)

    def deliver(self, result: StepResult) -> None:
        """Hand each generation to its request (late output for ended requests is dropped there)."""
        for entry, events in self.record(result):
            entry.publish(events)

    def record(self, result: StepResult) -> list[tuple[Entry, list[InferEvent]]]:
        """Account each generation to its request now; returns the events to publish to the clients later
        (the async loop queues its next shard call first)."""
        running = self.state.running
        records = []
        for generation in result.generations:
            entry = running.get(generation.request_id)
            if entry is not None:
                records.append((entry, entry.record(generation)))
        return records

    async def prefill(self, batch: NewBatch, cached_batch: CachedBatch | None = None) -> CachedBatch | None:
        """Prefill `batch` (joined to `cached_batch` on chunking shards), deliver, filter."""
        ids = [r.id for r in batch.requests] + list(cached_batch.request_ids if cached_batch else ())
        failed_batches = [batch.id] + ([cached_batch.id] if cached_batch else [])
        start_call = partial(self.client.prefill, batch, cached_batch)
        result = await self._call("prefill", ids, failed_batches, start_call)
        return None if result is None else await self.filter(result.batch)

    async def decode(self, batches: Sequence[CachedBatch]) -> CachedBatch | None:
        ids = [i for b in batches for i in b.request_ids]
        start_call = partial(self.client.decode, batches)
        result = await self._call("decode", ids, [b.id for b in batches], start_call)
        return None if result is None else await self.filter(result.batch)

    async def call(self, method: Method, start_call: Callable[[], Awaitable[StepResult]]) -> StepResult:
        """One shard step, recording TGI's batch metrics; raises `ShardError`. `start_call` starts the RPC
        inside the step's trace context (its span is the RPC's parent)."""
        start = time.monotonic()
        metrics.BATCH_INFERENCE_COUNT.labels(method=method).inc()
        step = self.state.tracer.step(method)
        try:
            result = await start_call()
        except ShardError:
            step.failed()
            metrics.BATCH_INFERENCE_FAILURE.labels(method=method).inc()
            raise
        t = result.timings
        if t.concat_ns is not None:
            metrics.BATCH_CONCAT_DURATION.labels(method=method).observe(t.concat_ns / 1e9)
        metrics.BATCH_FORWARD_DURATION.labels(method=method).observe(t.forward_ns / 1e9)
        metrics.BATCH_DECODE_DURATION.labels(method=method).observe(t.decode_ns / 1e9)
        metrics.BATCH_INFERENCE_DURATION.labels(method=method).observe(time.monotonic() - start)
        metrics.BATCH_INFERENCE_SUCCESS.labels(method=method).inc()
        metrics.SHARD_BUSY_SECONDS.inc(t.total_ns / 1e9)
        self.last_success = time.monotonic()
        step.done(result)
        return result

    async def _call(
        self,
        method: Method,
        request_ids: list[int],
        batch_ids: list[int],
        start_call: Callable[[], Awaitable[StepResult]],
    ) -> StepResult | None:
        """One step, executed synchronously: call, deliver, free what the shard dropped; errors fail it."""
        try:
            result = await self.call(method, start_call)
        except ShardError as exc:
            logger.error("%s failed: %s", method, exc, extra={"batch_ids": batch_ids})
            await self.fail(batch_ids, request_ids, InferError(exc.details or str(exc), "generation"))
            return None
        filter_start = time.monotonic()
        self.deliver(result)
        self._release_missing(request_ids, result.batch)
        metrics.BATCH_FILTER_DURATION.labels(method=method).observe(time.monotonic() - filter_start)
        return result

    def _release_missing(self, sent_ids: Iterable[int], batch: CachedBatch | None) -> None:
        """Requests the shard no longer holds (it dropped a wholly finished batch) free their blocks."""
        kept = set(batch.request_ids) if batch is not None else set()
        for request_id in sent_ids:
            if request_id not in kept:
                self.state.release(request_id)

    async def filter(self, batch: CachedBatch | None) -> CachedBatch | None:
        """Remove finished and abandoned requests from `batch` at the shards and free their blocks."""
        if batch is None:
            return None
        running = self.state.running
        keep = [i for i in batch.request_ids if (e := running.get(i)) is not None and e.live]
        if len(keep) == len(batch.request_ids):
            return batch
        return await self.keep_only(batch, keep)

    async def keep_only(self, batch: CachedBatch, keep: Sequence[int]) -> CachedBatch | None:
        """FilterBatch `batch` down to `keep` (ClearCache when empty) and free the others' KV blocks.

        Returns the new batch, or None when nothing is left; a failing call fails the batch's requests.
        """
        return await self.finish_filter(self.start_filter(batch, keep))

    def start_filter(self, batch: CachedBatch, keep: Sequence[int]) -> FilterCall:
        """Send FilterBatch (ClearCache when `keep` is empty); `finish_filter` does the bookkeeping.

        NOTE: the RPC starts in a task of its own, like every step call (`call`): calls reach the shards in
        the order their tasks were created, so a filter queued behind a step sent just before runs after it.
        """
        span = self.state.tracer.filtering(batch, keep=keep)
        task = span.start(self._filter_rpc(batch.id, tuple(keep)))
        return FilterCall(batch, tuple(keep), task, span)

    async def _filter_rpc(self, batch_id: int, keep: tuple[int, ...]) -> CachedBatch | None:
        if keep:
            return await self.client.filter_batch(batch_id, list(keep))
        await self.client.clear_cache(batch_id)
        return None

    async def finish_filter(self, call: FilterCall, batch_gone: bool = False) -> CachedBatch | None:
        """Await a sent filter, then free the removed requests' KV blocks. `batch_gone`: the shard dropped
        the batch before the filter ran (every request finished): its NOT_FOUND is expected."""
        batch = call.batch
        try:
            new_batch = await call.task
        except ShardError as exc:
            call.span.done(None)
            if batch_gone and exc.not_found:
                metrics.VANISHED_BATCH_CALLS.inc()
                for request_id in batch.request_ids:
                    self.state.release(request_id)
                return None
            logger.error("filter failed: %s", exc, extra={"batch_id": batch.id})
            await self.fail([batch.id], list(batch.request_ids), InferError(exc.details or str(exc)))
            return None
        call.span.done(new_batch)
        kept = set(call.keep)
        for request_id in batch.request_ids:
            if request_id in kept:
                continue
            entry = self.state.running.get(request_id)
            if entry is not None and entry.cancelled and not entry.ended:
                metrics.REQUEST_FAILURE.labels(err="dropped").inc()
            self.state.release(request_id)
        return new_batch

    async def fail(self, batch_ids: Sequence[int], request_ids: Sequence[int], error: InferError) -> None:
        """A step failed: every request in it gets the error; the shards drop the batches."""
        for batch_id in batch_ids:
            try:
                await self.client.clear_cache(batch_id)
            except ShardError as exc:
                logger.error("clear_cache(%s) failed: %s", batch_id, exc)
        for request_id in request_ids:
            entry = self.state.running.get(request_id)
            if entry is not None:
                entry.fail(error)
            self.state.release(request_id)
