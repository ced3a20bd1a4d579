"""Shard calls with their bookkeeping: start, measure, deliver tokens, filter finished requests, free.

Shared by the `sync` and `async` policies; the loops decide *when*, this file does *how*. Every call is
started here, in a task of its own (`start_*`), so the loops hold plain futures; the tracer is told what each
call carries and gives the context the RPC starts in, nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Literal, TypeVar

import grpc

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import CachedBatch, NewBatch, StepResult
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.isolation import plan_isolation
from tgi_async.scheduler.request import InferError, InferEvent
from tgi_async.scheduler.state import SchedulerState
from tgi_async.telemetry.scheduler import FilterHandle, StepHandle

logger = logging.getLogger(__name__)
Method = Literal["prefill", "decode"]
T = TypeVar("T")


class StepRunner:
    def __init__(self, client: ShardedClient, state: SchedulerState) -> None:
        self.client = client
        self.state = state
        self.in_flight: dict[asyncio.Future, float] = {}  # calls at the shard -> when they were sent
        self.shard_gone = False  # a call found no shard behind the socket (health says so at once)
        self.healthy = True  # TGI's generation health: false from a failed step until one succeeds

    # -- starting calls --------------------------------------------------------------------------------------
    def start_prefill(self, batch: NewBatch, cached: CachedBatch | None = None) -> asyncio.Task[StepResult]:
        step = self.state.tracer.step("prefill", batch, () if cached is None else (cached,))
        with step.context():  # NOTE: the RPC starts here, synchronously: its span is the step's child
            rpc = self.client.prefill(batch, cached)
        return self._track(self._measure("prefill", rpc, step))

    def start_decode(self, batches: Sequence[CachedBatch]) -> asyncio.Task[StepResult]:
        step = self.state.tracer.step("decode", None, tuple(batches))
        with step.context():
            rpc = self.client.decode(batches)
        return self._track(self._measure("decode", rpc, step))

    def start_filter(self, batch: CachedBatch, keep: Sequence[int]) -> asyncio.Task[CachedBatch | None]:
        """FilterBatch (ClearCache when `keep` is empty); `filtered` does the bookkeeping of its answer."""
        span = self.state.tracer.filtering(batch, keep=keep)
        with span.context():
            rpc = (
                self.client.filter_batch(batch.id, list(keep)) if keep else self.client.clear_cache(batch.id)
            )
        return self._track(self._answer_filter(rpc, span))

    def _track(self, coroutine: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coroutine)
        self.in_flight[task] = time.monotonic()
        task.add_done_callback(self._untrack)
        return task

    def _untrack(self, task: asyncio.Future) -> None:
        del self.in_flight[task]
        if not task.cancelled() and isinstance(exc := task.exception(), ShardError) and exc.unavailable:
            self.shard_gone = True

    async def _measure(self, method: Method, rpc: Awaitable[StepResult], step: StepHandle) -> StepResult:
        """One shard step, recording TGI's batch metrics; raises `ShardError`."""
        start = time.monotonic()
        metrics.BATCH_INFERENCE_COUNT.labels(method=method).inc()
        try:
            result = await rpc
        except ShardError as exc:
            step.failed(exc)
            metrics.BATCH_INFERENCE_FAILURE.labels(method=method).inc()
            raise
        t = result.timings
        if t.concat_ns is not None:  # NOTE: TGI labels it "decode" whatever the method (backend.rs)
            metrics.BATCH_CONCAT_DURATION.labels(method="decode").observe(t.concat_ns / 1e9)
        metrics.BATCH_FORWARD_DURATION.labels(method=method).observe(t.forward_ns / 1e9)
        metrics.BATCH_DECODE_DURATION.labels(method=method).observe(t.decode_ns / 1e9)
        metrics.BATCH_INFERENCE_DURATION.labels(method=method).observe(time.monotonic() - start)
        metrics.BATCH_INFERENCE_SUCCESS.labels(method=method).inc()
        metrics.SHARD_BUSY_SECONDS.inc(t.total_ns / 1e9)
        self.shard_gone, self.healthy = False, True
        step.done(result)
        return result

    @staticmethod
    async def _answer_filter(rpc: Awaitable[CachedBatch | None], span: FilterHandle) -> CachedBatch | None:
        try:
            answer = await rpc
        except ShardError:
            span.done(None)
            raise
        span.done(answer)
        return answer

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def record(self, result: StepResult) -> list[tuple[Entry, list[InferEvent]]]:
        """Account each generation to its request now; returns the events to publish to the clients later
        (the async loop queues its next shard call first)."""
        running = self.state.running
        records = []
        skipped = []  # TGI observes n - 1 per Generation it sends (0 unless speculating): one call a step
        for generation in result.generations:
            entry = running.get(generation.request_id)
            if entry is not None:
                if entry.live:  # TGI observes what it sends (a flash shard keeps stepping finished rows)
                    skipped.append(len(generation.tokens) - 1)
                records.append((entry, entry.record(generation)))
        metrics.REQUEST_SKIPPED_TOKENS.observe_many(skipped)
        return records

    def deliver(self, result: StepResult) -> None:
        """Hand each generation to its request (late output for ended requests is dropped there)."""
        for entry, events in self.record(result):
            entry.publish(events)

    def filtered(self, batch: CachedBatch, keep: Sequence[int]) -> None:
        """A filter of `batch` down to `keep` was answered: free the others' KV blocks."""
        kept = set(keep)
        for request_id in batch.request_ids:
            if request_id in kept:
                continue
            entry = self.state.running.get(request_id)
            if entry is not None and entry.cancelled and not entry.ended:
                metrics.REQUEST_FAILURE.labels(err="dropped").inc()
            self.state.release(request_id)

    def fail(self, request_ids: Iterable[int], error: InferError) -> None:
        """A step failed: every request of it that has not ended gets `error` (counted as TGI counts it)."""
        self.healthy = False
        for request_id in request_ids:
            entry = self.state.running.get(request_id)
            if entry is not None and not entry.ended:
                entry.fail(error)
                metrics.REQUEST_FAILURE.labels(err="generation").inc()

    def fail_requests(self, request_ids: Iterable[int], error: InferError) -> None:
        """`fail` them, and free their KV blocks (no call in flight may write them any more)."""
        request_ids = list(request_ids)
        self.fail(request_ids, error)
        for request_id in request_ids:
            self.state.release(request_id, kv_intact=False)

    async def clear(self, batch_ids: Iterable[int]) -> None:
        """Drop batches at the shards after a failure (best effort: the shard may be gone)."""
        for batch_id in batch_ids:
            try:
                await self._track(self.client.clear_cache(batch_id))
            except ShardError as exc:
                logger.error("clear_cache(%s) failed: %s", batch_id, exc)

    # -- a failed Prefill's requests, apart ---------------------------------------------------------------
    def plan_retries(self, batch: NewBatch, exc: ShardError, level: int) -> list[tuple[NewBatch, int]]:
        """A Prefill of `batch` failed for a reason in its requests (`caused_by_requests`) at bisection depth
        `level`: fail the request found to fail alone, free those whose client left, and return the batches
        to prefill again, each with its depth (`isolation.plan_isolation`)."""
        running = self.state.running
        live = []
        for request in batch.requests:
            entry = running.get(request.id)
            if entry is not None and entry.live:
                live.append(request.id)
            else:
                self.state.release(request.id, kv_intact=False)
        plan = plan_isolation(live, level)
        self.state.tracer.isolating(batch.id, plan)
        if plan.fail:
            logger.warning("prefill of batch %s failed for its requests %s: %s", batch.id, plan.fail, exc)
        self.fail_requests(plan.fail, generation_error(exc))
        metrics.PREFILL_ISOLATION_RETRIES.inc(len(plan.retry))
        return [(self.state.rebatch(batch, group), plan.level) for group in plan.retry]

    async def survived(self, cached: CachedBatch, exc: ShardError) -> list[CachedBatch]:
        """A Prefill joining `cached` failed for a reason in its new requests: TGI's shards check those
        before they take the cached batch, unless the failure came later. FilterBatch with every request
        (changes nothing) asks; a lost batch fails its requests with the Prefill's error."""
        try:
            answer = await self.start_filter(cached, cached.request_ids)
        except ShardError as probe:
            logger.error("batch %s was lost with the failed prefill: %s", cached.id, probe)
            self.fail_requests(cached.request_ids, generation_error(exc))
            await self.clear([cached.id])
            return []
        return [answer or cached]

    # -- synchronous steps (the sync policy, the async policy's padded prefills) ---------------------------
    async def prefill(
        self, batch: NewBatch, cached_batch: CachedBatch | None = None, level: int = 0
    ) -> list[CachedBatch]:
        """Prefill `batch` (joined to `cached_batch` on chunking shards), deliver, filter.

        Returns the batches the shard holds for these requests: the one it made, or, after a failure its
        requests caused, the cached batch if it survived and one batch per group of them that prefilled
        apart (`isolation`); Decode merges them.
        """
        ids = [r.id for r in batch.requests] + list(cached_batch.request_ids if cached_batch else ())
        try:
            result = await self.start_prefill(batch, cached_batch)
        except ShardError as exc:
            if not caused_by_requests(exc):
                await self._failed(ids, [batch.id] + ([cached_batch.id] if cached_batch else []), exc)
                return []
            await self.clear([batch.id])  # TGI's router does; its shards never cache a failed batch
            kept = await self.survived(cached_batch, exc) if cached_batch is not None else []
            for retry, depth in self.plan_retries(batch, exc, level):
                kept += await self.prefill(retry, None, depth)
            return kept
        filtered = await self._deliver_and_filter("prefill", ids, result)
        return [filtered] if filtered is not None else []

    async def decode(self, batches: Sequence[CachedBatch]) -> CachedBatch | None:
        ids = [i for b in batches for i in b.request_ids]
        try:
            result = await self.start_decode(batches)
        except ShardError as exc:
            await self._failed(ids, [b.id for b in batches], exc)
            return None
        return await self._deliver_and_filter("decode", ids, result)

    async def _deliver_and_filter(
        self, method: Method, request_ids: list[int], result: StepResult
    ) -> CachedBatch | None:
        """Deliver a step's tokens, free what the shard dropped, filter the finished out; returns the batch
        left at the shard."""
        filtering_since = time.monotonic()
        self._delivered(request_ids, result)
        batch = await self.filter(result.batch)
        # TGI's span: from the answer through sending the tokens and FilterBatch
        metrics.BATCH_FILTER_DURATION.labels(method=method).observe(time.monotonic() - filtering_since)
        return batch

    async def _failed(self, request_ids: list[int], batch_ids: list[int], exc: ShardError) -> None:
        logger.error("step failed: %s", exc, extra={"batch_ids": batch_ids})
        self.fail_requests(request_ids, generation_error(exc))
        await self.clear(batch_ids)

    def _delivered(self, request_ids: list[int], result: StepResult) -> None:
        self.deliver(result)
        kept = set(result.batch.request_ids) if result.batch is not None else set()
        for request_id in request_ids:  # the shard dropped a wholly finished batch
            if request_id not in kept:
                self.state.release(request_id)

    async def filter(self, batch: CachedBatch | None) -> CachedBatch | None:
        """Remove finished and abandoned requests from `batch` at the shards and free their blocks.

        Returns the new batch, or None when nothing is left; a failing call fails the batch's requests.
        """
        if batch is None:
            return None
        running = self.state.running
        keep = [i for i in batch.request_ids if (e := running.get(i)) is not None and e.live]
        if len(keep) == len(batch.request_ids):
            return batch
        try:
            answer = await self.start_filter(batch, keep)
        except ShardError as exc:
            logger.error("filter failed: %s", exc, extra={"batch_id": batch.id})
            self.fail_requests(batch.request_ids, generation_error(exc))
            await self.clear([batch.id])
            return None
        self.filtered(batch, keep)
        return answer


def generation_error(exc: ShardError) -> InferError:
    """What a client sees when its shard call failed: TGI's text ("Server error: " + the shard's message), but
    never gRPC's own words about the transport, which name the shard's socket (the log line has them)."""
    if exc.code in _SHARD_MESSAGE_CODES:
        message = _PATHS.sub("<path>", exc.details or exc.code.name)
    elif exc.timed_out:
        message = "the model shard did not answer in time"
    elif exc.code == grpc.StatusCode.UNKNOWN:  # an exception the shard did not turn into a status
        message = "the model shard failed"
    else:  # UNAVAILABLE, CANCELLED, ...: the transport's own words ("Socket closed", "Stream removed")
        message = "the model shard is unavailable"
    return InferError(f"Server error: {message}", "generation")


def caused_by_requests(exc: ShardError) -> bool:
    """Whether a failed Prefill may owe its failure to a request it carried: the shard answered with an error
    of its own and lives on (not UNAVAILABLE, not a deadline), about something other than a batch it lacks."""
    return exc.code in _REQUEST_CODES and not exc.not_found


_REQUEST_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Statuses a shard sets itself with its own message (TGI's shards: INTERNAL with the exception's text).
_SHARD_MESSAGE_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# A file or socket path in a shard's message (`unix:/tmp/x/shard-0`, `/usr/lib/python3/...`): not for clients.
_PATHS = re.compile(r"(?<![\w.])(?:unix:)?(?:/[\w.@%+~-]+){2,}/?")
