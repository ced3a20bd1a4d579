"""`--scheduler async`: a prefill loop and a decode loop sharing the shard, with pipelined shard calls.

- The prefill loop admits queued requests within a per-step prompt budget (`prefill_step_tokens`). On
  chunking shards it hands the admitted batch to the decode loop, which sends it as the next step
  (Prefill(new, cached_batch=running)): the prompt's first chunk rides along with the running requests'
  decode, and the shard continues it along the following steps. On padded shards (no chunking) it prefills
  small batches itself and hands the prefilled batch over, to join with Decode([running, prefilled]).
- The decode loop keeps up to DEPTH calls queued at the shard, so the shard never waits on the router: the
  next call is queued before the previous step's tokens go to clients. Each turn reads plan -> send, or
  plan -> receive -> update; `decode_plan.plan_decode` decides (its rules make every pipeline safe on shards
  that start calls in any order), `Pipeline` sends and counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.types import CachedBatch, NewBatch, StepResult
from tgi_async.scheduler.admission import Budget
from tgi_async.scheduler.core import SchedulerCore
from tgi_async.scheduler.decode_plan import EXTRA_STEPS, DecodePlan, plan_decode
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.pipeline import Call, Pipeline
from tgi_async.scheduler.request import InferEvent
from tgi_async.scheduler.steps import caused_by_requests, generation_error

logger = logging.getLogger(__name__)

DEPTH = 2  # calls queued at the shard: one running, one waiting behind it


class AsyncScheduler(SchedulerCore):
    def __init__(self, client, info, config) -> None:
        super().__init__(client, info, config, extra_slots=EXTRA_STEPS * (1 + info.speculate))
        self.pipeline = Pipeline(self.steps, info.speculate, ordered=info.orders_calls)
        self.ready: deque[tuple[CachedBatch, list[Entry]]] = deque()  # padded: prefilled, waiting to join
        self.prefills: deque[tuple[NewBatch, list[Entry]]] = deque()  # chunking: admitted, waiting to join
        self.decode_wakeup = asyncio.Event()
        self.unpublished: list[tuple[Entry, list[InferEvent]]] = []  # received events, clients not woken yet
        self.retry_levels: dict[int, int] = {}  # batch id -> bisection depth, for a failed join's requests
        self.unconfirmed_batch: int | None = None  # the batch a join that failed may have lost with it

    def _loops(self):
        return [("prefill_loop", self._prefill_loop), ("decode_loop", self._decode_loop)]

    # -- prefill ---------------------------------------------------------------------------------------------
    def _prefill_budget(self) -> Budget:
        config, state, batch = self.config, self.state, self.pipeline.batch
        held = sum(b.max_tokens for b, _ in self.ready) + (batch.max_tokens if batch else 0)
        step_tokens = config.prefill_step_tokens
        chunking = self.info.support_chunking
        if chunking and (self.prefills or self.pipeline.prompt_in_progress()):
            # NOTE: a prompt still being chunked is continued by the shard, within its own bound: the next
            # prompt waits, so one prompt at most rides along the decode steps.
            step_tokens = 0
        elif chunking and batch is not None:
            # The chunk shares its step with the running decodes (TGI's accounting); never starve prompts,
            # nor make the forward larger than Warmup's.
            step_tokens = max(step_tokens - batch.size, step_tokens // 4)
            step_tokens = min(step_tokens, config.max_batch_prefill_tokens - batch.size)
        if not chunking and state.waiting:
            # A prompt cannot be cut: let the first one in whole, at worst one over-budget prompt per step.
            step_tokens = max(step_tokens, state.waiting[0].request.input_length)
        max_size = max(self.max_rows - len(state.running), 0)
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
            if self.info.support_chunking:
                self.prefills.append((new_batch, entries))
                self.decode_wakeup.set()
                continue
            # Padded shards: whole prompts in one Prefill of their own (a batch apart: it commutes with the
            # decode loop's calls), then the batch joins the decodes.
            for cached in await steps.prefill(new_batch):
                kept = set(cached.request_ids)
                self.ready.append((cached, [e for e in entries if e.id in kept]))
                self.decode_wakeup.set()

    # -- decode ----------------------------------------------------------------------------------------------
    async def _decode_loop(self) -> None:
        pipeline = self.pipeline
        while True:
            plan = plan_decode(pipeline.view(self._joins_waiting()), DEPTH)
            self.state.tracer.decode_plan(plan, len(pipeline.calls))
            if self._send(plan):
                continue
            # Only now, with the next call on its way to the shard, the last step's tokens wake the streams.
            # NOTE: one turn of the loop first: the call tasks just created start their RPCs, and grpc.aio
            # queues each RPC's own task at that moment, so it runs before the woken streams.
            if self.unpublished:
                await asyncio.sleep(0)
                self._publish()
                continue  # things may have changed during that turn: plan again
            if plan.action == "receive" and plan.reason == "unconfirmed":
                await asyncio.wait((pipeline.calls[0].task,), timeout=pipeline.unconfirmed_for())
                continue
            if plan.action == "receive":
                await self._update(await pipeline.receive())
                continue
            metrics.BATCH_CURRENT_SIZE.set(0)
            metrics.BATCH_CURRENT_MAX_TOKENS.set(0)
            self.decode_wakeup.clear()
            await self.decode_wakeup.wait()

    def _joins_waiting(self) -> bool:
        """Prompts wait to join, and may: after a join failed, a step on the batch first tells whether the
        shard still holds it (else the joining prompts would fail with it)."""
        batch = self.pipeline.batch
        unconfirmed = batch is not None and batch.id == self.unconfirmed_batch
        return bool(self.prefills or self.ready) and not unconfirmed

    def _send(self, plan: DecodePlan) -> bool:
        """Send the call `plan` asks for; False if it asks for none."""
        pipeline = self.pipeline
        if plan.action == "decode":
            pipeline.decode()
        elif plan.action == "filter":
            pipeline.filter(plan.remove)
        elif plan.action in ("create", "join"):
            if self.prefills:
                new_batch, entries = self.prefills.popleft()
                pipeline.join(new_batch, (), entries)
            else:
                prefilled = tuple(self.ready)
                self.ready.clear()
                pipeline.join(None, tuple(b for b, _ in prefilled), [e for _, es in prefilled for e in es])
            if plan.action == "join":
                reason = "chunking" if self.info.support_chunking else "backpressure"
                metrics.BATCH_CONCAT.labels(reason=reason).inc()
        else:
            return False
        batch = pipeline.batch
        metrics.BATCH_CURRENT_SIZE.set(batch.size if batch else 0)
        metrics.BATCH_CURRENT_MAX_TOKENS.set(batch.max_tokens if batch else 0)
        return True

    def _publish(self) -> None:
        for entry, events in self.unpublished:
            entry.publish(events)
        self.unpublished.clear()

    async def _update(self, call: Call) -> None:
        """Account for an answered call."""
        try:
            answer = call.task.result()
        except ShardError as exc:
            await self._call_failed(call, exc)
            return
        if call.batch_id == self.unconfirmed_batch:
            self.unconfirmed_batch = None  # the shard still holds it
        if call.new_batch is not None:
            self.retry_levels.pop(call.new_batch.id, None)
        if call.kind == "filter":
            self.steps.filtered(self._sent_batch(call), call.keep)
            if answer is not None:
                self.pipeline.corrected(answer)
            self.wakeup.set()  # freed blocks may admit queued requests
            return
        self._stepped(call, answer)

    def _stepped(self, call: Call, result: StepResult) -> None:
        recording_since = time.monotonic()
        self.pipeline.count(result)
        self.unpublished.extend(self.steps.record(result))
        if self.state.waiting:
            self.wakeup.set()  # the prompt in progress may be done: the prefill loop may admit the next
        if result.batch is None:
            # Every request the shard held in the batch has finished: it dropped the batch. Calls queued
            # behind this one will find it gone (expected); a join among them brings its requests again in a
            # new batch, so only the requests this step computed leave, and those that ended before it and
            # were not filtered out yet (the bundled shard computes and names a stopped request no more).
            rows = self.pipeline.vanish(call.batch_id)
            gone = {g.request_id for g in result.generations} | {r.id for r in rows if not r.entry.live}
            for request_id in gone:
                self.state.release(request_id)
            self.wakeup.set()
        # NOTE: TGI's span also holds the FilterBatch call; here filters are pipelined calls of their own.
        method = "prefill" if call.new_batch is not None else "decode"
        metrics.BATCH_FILTER_DURATION.labels(method=method).observe(time.monotonic() - recording_since)

    def _sent_batch(self, call: Call) -> CachedBatch:
        ids = call.keep + tuple(r.id for r in call.rows)
        return CachedBatch(call.batch_id, ids, len(ids), 0, 0)

    async def _call_failed(self, call: Call, exc: ShardError) -> None:
        pipeline = self.pipeline
        if exc.not_found and (
            call.batch_id in pipeline.vanished or await pipeline.vanished_later(call.batch_id)
        ):
            # The batch vanished (all its requests finished) before this call ran: expected with a pipeline.
            # It is the first batch the call names and shards take them in order, so what the call would
            # have brought in is intact: it joins again.
            metrics.VANISHED_BATCH_CALLS.inc()
            if call.new_batch is not None:
                self.prefills.appendleft((call.new_batch, [r.entry for r in call.rows if r.id in _ids(call)]))
            for batch in reversed(call.prefilled):
                ids = set(batch.request_ids)
                self.ready.appendleft((batch, [r.entry for r in call.rows if r.id in ids]))
            if call.kind == "filter":
                for row in call.rows:
                    self.state.release(row.id)
            self.decode_wakeup.set()
            return
        if call.new_batch is not None and caused_by_requests(exc):
            await self._isolate(call, exc)
            return
        # The shard lost the batch (TGI's shards drop a batch whose call raised): every request in it, and
        # every request a call in flight brings to it, fails; blocks are freed once no call can write them.
        logger.error("step failed: %s", exc, extra={"batch_id": call.batch_id})
        self.steps.healthy = False
        error = generation_error(exc)
        failed = {row.id for row in pipeline.rows.values()}
        batches = set()
        for lost in (call, *pipeline.calls):
            failed.update(r.id for r in lost.rows)
            batches.update((lost.batch_id, *(b.id for b in lost.prefilled)))
            if lost.new_batch is not None:
                self.retry_levels.pop(lost.new_batch.id, None)
        self._publish()  # what the shard produced before goes out first
        self.steps.fail(failed, error)  # at once: no client waits for the calls in flight
        while pipeline.calls:
            await pipeline.receive()
        pipeline.clear()
        await self.steps.clear(batches)  # TGI's shards pop named batches one by one: some may remain
        self.steps.fail_requests(failed, error)
        self.wakeup.set()

    async def _isolate(self, call: Call, exc: ShardError) -> None:
        """A create / join failed for a reason in the prompts it brought: they leave the batch and queue
        again in halves (`isolation`); the running requests stay, unless the next step on their batch finds
        it lost with the failed call (then that step fails them)."""
        new_batch = call.new_batch
        assert new_batch is not None
        entries = {r.id: r.entry for r in call.rows}
        self.pipeline.withdraw(new_batch)
        if self.pipeline.batch is not None:
            self.unconfirmed_batch = self.pipeline.batch.id
        await self.steps.clear([new_batch.id])  # TGI's router does; its shards never cache a failed batch
        retries = self.steps.plan_retries(new_batch, exc, self.retry_levels.pop(new_batch.id, 0))
        for retry, level in reversed(retries):
            self.retry_levels[retry.id] = level
            self.prefills.appendleft((retry, [entries[r.id] for r in retry.requests]))
        self.wakeup.set()
        self.decode_wakeup.set()


def _ids(call: Call) -> set[int]:
    return {r.id for r in call.new_batch.requests} if call.new_batch is not None else set()
