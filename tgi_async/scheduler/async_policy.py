"""`--scheduler async`: a prefill loop and a decode loop sharing the shard, with pipelined shard calls.

- The prefill loop admits queued requests within a per-step prompt budget (`prefill_step_tokens`).
  On chunking shards it hands the admitted batch to the decode loop, which sends it as the next step
  (Prefill(new, cached_batch=running)): the prompt's first chunk rides along with the running requests'
  decode, and its later chunks ride along the following Decode steps (the shard bounds them by the same
  budget, learnt at warmup). On padded shards (no chunking) it prefills small batches itself and hands
  the prefilled batch over, to join with Decode([running, prefilled]).
- The decode loop keeps up to DEPTH calls queued at the shard, so the shard never waits on the router:
  the next call is queued before the previous step's tokens go to clients.
- Its decisions (decode, wait, drain, filter) come from `decode_plan.plan_decode`, a pure function.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, replace
from functools import partial

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.types import CachedBatch, NewBatch, StepResult
from tgi_async.scheduler.admission import Budget
from tgi_async.scheduler.core import SchedulerCore
from tgi_async.scheduler.decode_plan import RequestView, plan_decode
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.request import InferError, InferEvent
from tgi_async.scheduler.steps import FilterCall

logger = logging.getLogger(__name__)

DEPTH = 2  # Decode calls queued at the shard: one running, one waiting behind it
# NOTE: a shard that does not order numbered calls (TGI's) starts them as gRPC hands them over: in arrival
# order, except for two calls reaching an idle shard together. So a call sent into an idle pipeline gets this
# long to start (an idle shard starts a call within microseconds) before another is queued behind it.
DISPATCH_GRACE_S = 0.002


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[StepResult]
    batches: list[CachedBatch]  # what was sent: the decode batch first, then batches merged into it
    entries: list[Entry]
    new_batch: NewBatch | None = None  # a Prefill's new requests (their entries are in `entries` too)
    idle_start_at: float | None = None  # sent while no call was running at the shard: when (loop time)

    @property
    def batch_id(self) -> int:
        """The id the shard's resulting batch has: the first cached batch's, else the new batch's."""
        return self.batches[0].id if self.batches else self.new_batch.id

    @property
    def new_ids(self) -> set[int]:
        return {r.id for r in self.new_batch.requests} if self.new_batch else set()

    def batch_ids(self) -> list[int]:
        return [b.id for b in self.batches] + ([self.new_batch.id] if self.new_batch else [])

    def request_ids(self) -> list[int]:
        return [i for b in self.batches for i in b.request_ids] + sorted(self.new_ids)


@dataclass(slots=True)
class _FilterInFlight:
    """A FilterBatch queued behind the steps in flight (shards that order calls); accounted for in order."""

    call: FilterCall
    unfinished: list[Entry]  # removed at their length limit: the steps in flight must end them
    entries: tuple[Entry, ...] = ()  # no step tokens ride on a filter

    @property
    def task(self) -> asyncio.Future[CachedBatch | None]:
        return self.call.task


class AsyncScheduler(SchedulerCore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ready: deque[CachedBatch] = deque()  # padded shards: prefilled batches waiting to join
        self.prefills: deque[tuple[NewBatch, list[Entry]]] = deque()  # chunking shards: admitted, unsent
        self.decode_wakeup = asyncio.Event()
        self.decode_batch: CachedBatch | None = None  # the decode batch as of the last call sent
        self.vanished: set[int] = set()  # batch ids the shard dropped while calls naming them were queued
        self.unpublished: list[tuple[Entry, list[InferEvent]]] = []  # received events, clients not woken yet

    def _loops(self):
        return [("prefill_loop", self._prefill_loop), ("decode_loop", self._decode_loop)]

    async def _reset(self, error: InferError) -> None:
        self._publish()  # tokens the shard produced go out before any error
        self.ready.clear()
        for _, entries in self.prefills:
            for entry in entries:
                entry.fail(error)
                self.state.release(entry.id)
        self.prefills.clear()
        self.decode_batch = None
        await super()._reset(error)

    # -- prefill ---------------------------------------------------------------------------------------------
    def _prefill_budget(self) -> Budget:
        config, state = self.config, self.state
        held = sum(b.max_tokens for b in self.ready) + (
            self.decode_batch.max_tokens if self.decode_batch else 0
        )
        step_tokens = config.prefill_step_tokens
        if self.info.support_chunking and (self.prefills or self._prompt_in_progress()):
            # NOTE: a prompt still being chunked uses this step budget (the shard continues it within the
            # same bound): the next prompt waits, so one chunk at most rides along each decode step.
            step_tokens = 0
        elif self.info.support_chunking and self.decode_batch is not None:
            # The chunk shares its step with the running decodes (TGI's accounting); never starve prompts.
            step_tokens = max(step_tokens - self.decode_batch.size, step_tokens // 4)
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
            if self.info.support_chunking:
                self.prefills.append((new_batch, entries))
                self.decode_wakeup.set()
                continue
            # Padded shards: whole prompts in one Prefill of their own, then the batch joins the decodes.
            cached = await steps.prefill(new_batch)
            if cached is not None:
                self.ready.append(cached)
                self.decode_wakeup.set()

    def _prompt_in_progress(self) -> bool:
        """A request in the decode batch still has prompt chunks to compute."""
        return any(e.live and e.tokens_received == 0 for e in self.state.running.values())

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
            decoding = entry.tokens_received > 0
            views.append(RequestView(request_id, projected, entry.max_new_tokens, entry.live, decoding))
        return views

    def _filter_threshold(self) -> int:
        if self.info.requires_padding:
            return 1  # padded shards keep computing finished rows: drop them at once
        size = self.decode_batch.size if self.decode_batch else 0
        return 1 if self.state.waiting else max(1, size // 8)

    async def _decode_loop(self) -> None:
        pending: deque[_InFlight | _FilterInFlight] = deque()
        while True:
            waiting_to_join = bool(self.ready or self.prefills)
            threshold = self._filter_threshold()
            steps = sum(1 for c in pending if isinstance(c, _InFlight))
            decision = plan_decode(
                self._views(),
                steps,
                DEPTH,
                waiting_to_join,
                threshold,
                ordered=self.info.orders_calls,
                filters_in_flight=len(pending) - steps,
            )
            self.state.tracer.decode_decision(decision, steps)
            grace = self._dispatch_grace(pending) if decision.action == "decode" else 0.0
            if decision.action == "decode" and not grace:
                pending.append(self._send_decode(into_idle=all(c.task.done() for c in pending)))
                continue
            # Only now, with the next call on its way to the shard, the last step's tokens wake the streams.
            # NOTE: one turn of the loop first: the call tasks just created start their RPCs, and grpc.aio
            # queues each RPC's own task at that moment, so it runs before the woken streams.
            if self.unpublished:
                await asyncio.sleep(0)
                self._publish()
                continue  # things may have changed during that turn: decide again
            if decision.action == "decode":  # the call sent into an idle pipeline still has time to start
                await asyncio.wait({pending[-1].task}, timeout=grace)
                continue
            if decision.action == "filter":
                queued = self._send_filter(decision.remove)
                if pending:  # ordered shards: it runs after the steps in flight; accounted for after them
                    pending.append(queued)
                else:
                    await self._finish_filter(queued)
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

    def _publish(self) -> None:
        for entry, events in self.unpublished:
            entry.publish(events)
        self.unpublished.clear()

    def _dispatch_grace(self, pending: deque[_InFlight | _FilterInFlight]) -> float:
        """Seconds to wait before queueing a call behind `pending` (see DISPATCH_GRACE_S); 0: now."""
        last = pending[-1] if pending else None
        if (
            self.info.orders_calls
            or not isinstance(last, _InFlight)
            or last.idle_start_at is None
            or last.task.done()
        ):
            return 0.0
        return max(0.0, last.idle_start_at + DISPATCH_GRACE_S - asyncio.get_running_loop().time())

    def _send_decode(self, into_idle: bool) -> _InFlight:
        """Queue the next step at the shard: a Prefill carrying the next admitted prompt chunk beside the
        running decodes (chunking shards), else a Decode of the running batch and any prefilled ones."""
        running = self.state.running
        batches = ([self.decode_batch] if self.decode_batch else []) + list(self.ready)
        self.ready.clear()
        new_batch, new_entries = self.prefills.popleft() if self.prefills else (None, [])
        entries = [running[i] for b in batches for i in b.request_ids if i in running] + new_entries
        for entry in entries:
            entry.tokens_in_flight += 1
        ids = tuple(i for b in batches for i in b.request_ids)
        if new_batch is not None:
            ids += tuple(r.id for r in new_batch.requests)
            cached = batches[0] if batches else None
            start_call, method = partial(self.client.prefill, new_batch, cached), "prefill"
        else:
            start_call, method = partial(self.client.decode, batches), "decode"
        # NOTE: the shard concatenates into the first batch's id; the next call only needs that id.
        self.decode_batch = CachedBatch(
            id=batches[0].id if batches else new_batch.id,
            request_ids=ids,
            size=len(ids),
            max_tokens=sum(b.max_tokens for b in batches) + (new_batch.max_tokens if new_batch else 0),
            current_tokens=len(ids),
        )
        metrics.BATCH_CURRENT_SIZE.set(len(ids))
        metrics.BATCH_CURRENT_MAX_TOKENS.set(self.decode_batch.max_tokens)
        if len(batches) > 1 or (new_batch is not None and batches):
            metrics.BATCH_CONCAT.labels(reason="async_merge").inc()
        task = asyncio.create_task(self.steps.call(method, start_call))
        sent_at = asyncio.get_running_loop().time() if into_idle else None
        return _InFlight(task, batches, entries, new_batch, sent_at)

    async def _receive(self, pending: deque[_InFlight | _FilterInFlight]) -> None:
        call = pending.popleft()
        if isinstance(call, _FilterInFlight):
            await self._finish_filter(call)
            return
        try:
            result = await call.task
        except ShardError as exc:
            for entry in call.entries:
                entry.tokens_in_flight -= 1
            await self._call_failed(call, exc, pending)
            return
        for entry in call.entries:
            entry.tokens_in_flight -= 1
        self.unpublished.extend(self.steps.record(result))
        if self.state.waiting:
            self.wakeup.set()  # the prompt in progress may be done: the prefill loop may admit the next
        if result.batch is None:
            # Every request finished at this step: the shard dropped the batch. Calls queued behind this one
            # will find it gone (expected); their requests are all ended already.
            self.vanished.add(call.batch_id)
            if self.decode_batch is not None and self.decode_batch.id == call.batch_id:
                self.decode_batch = None
            for entry in call.entries:
                if not any(entry in other.entries for other in pending):
                    self.state.release(entry.id)
            self.wakeup.set()

    async def _call_failed(
        self, call: _InFlight, exc: ShardError, pending: deque[_InFlight | _FilterInFlight]
    ) -> None:
        if exc.not_found and call.batches and call.batches[0].id in self.vanished:
            # The batch vanished one step earlier (all its requests finished): expected with a pipeline.
            # The shards check every batch before changing any, so what rode along is intact: send it again.
            metrics.VANISHED_BATCH_CALLS.inc()
            merged = call.batches[1:]
            self.ready.extendleft(reversed(merged))
            retried = {i for b in merged for i in b.request_ids} | call.new_ids
            if call.new_batch is not None:
                self.prefills.appendleft((call.new_batch, [e for e in call.entries if e.id in call.new_ids]))
            for entry in call.entries:
                if entry.id not in retried:
                    self.state.release(entry.id)
            return
        logger.error("step failed: %s", exc, extra={"batch_id": call.batch_id})
        # Everything queued behind it fails too; wait for those calls so no KV write races the cleanup.
        while pending:
            other = pending.popleft()
            try:
                await other.task
            except ShardError:
                pass
            if isinstance(other, _FilterInFlight):
                other.call.span.done(None)
            for entry in other.entries:
                entry.tokens_in_flight -= 1
        error = InferError(exc.details or str(exc), "generation")
        await self.steps.fail(call.batch_ids(), call.request_ids(), error)
        self.decode_batch = None
        self.wakeup.set()

    def _send_filter(self, remove: tuple[int, ...]) -> _FilterInFlight:
        """FilterBatch the decode batch down to all but `remove`; the loop plans with the rest from now on."""
        batch = self.decode_batch
        assert batch is not None
        gone = set(remove)
        keep = [i for i in batch.request_ids if i not in gone]
        # A request taken out at its length limit without the shard reporting an end would leave its client
        # hanging: it ends with an error instead (after the filter, so its trace still says why it left).
        unfinished = [e for i in remove if (e := self.state.running.get(i)) is not None and e.live]
        call = self.steps.start_filter(batch, keep)
        # NOTE: the shard keeps the batch's id; its capacity (max_tokens) is corrected when the answer comes.
        self.decode_batch = replace(batch, request_ids=tuple(keep), size=len(keep)) if keep else None
        return _FilterInFlight(call, unfinished)

    async def _finish_filter(self, queued: _FilterInFlight) -> None:
        batch = queued.call.batch
        answer = await self.steps.finish_filter(queued.call, batch_gone=batch.id in self.vanished)
        current = self.decode_batch
        if current is not None and current.id == batch.id:
            if answer is None:
                self.decode_batch = None  # the filter failed (its requests failed with it) or met no batch
            elif current.request_ids == answer.request_ids:
                self.decode_batch = answer
            else:  # a prompt joined the batch since: keep its requests, take the capacity the filter freed
                freed = batch.max_tokens - answer.max_tokens
                self.decode_batch = replace(current, max_tokens=max(current.max_tokens - freed, 0))
        for entry in queued.unfinished:
            entry.fail(InferError("Incomplete generation", "incomplete_generation"))
        self.wakeup.set()  # freed blocks may admit queued requests
