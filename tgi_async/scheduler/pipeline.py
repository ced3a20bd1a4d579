"""The async decode batch as the router knows it, and the calls in flight on it. Owned by the decode loop.

`Pipeline` sends the calls `plan_decode` chose (decode, join, filter), counts for every request the steps in
flight and the tokens returned (what `has_room` needs), and hands answers back in the order it sent the calls.
It keeps no request-facing state: entries hear of their tokens through `StepRunner.record`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tgi_async.client.types import CachedBatch, NewBatch, StepResult
from tgi_async.scheduler.decode_plan import DISPATCH_GRACE_S, CallKind, PipelineView, RowView, has_room
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.steps import StepRunner


@dataclass(slots=True, eq=False)
class Row:
    """One request of the decode batch: how far the shard got with it, as far as the answers say."""

    entry: Entry
    capacity: int | None  # KV slots allocated to it (None: padded shards have none)
    tokens: int = 0  # tokens the shard returned for it (0: still in its prompt)
    steps_in_flight: int = 0  # calls in flight that step it

    @property
    def id(self) -> int:
        return self.entry.id


@dataclass(slots=True, eq=False)
class Call:
    """A call sent on the decode batch and not received yet."""

    kind: CallKind
    batch_id: int  # the decode batch it names (or creates)
    rows: tuple[Row, ...]  # the requests it steps; for a filter, the ones it removes
    task: asyncio.Future[Any]  # StepResult (steps), CachedBatch | None (filters)
    sent_at: float = 0.0  # loop time
    new_batch: NewBatch | None = None  # prompts it brings in (chunking shards)
    prefilled: tuple[CachedBatch, ...] = ()  # prefilled batches it merges in (padded shards)
    keep: tuple[int, ...] = ()  # filter: the requests that stay


@dataclass(slots=True)
class Pipeline:
    steps: StepRunner
    speculate: int
    ordered: bool  # the shard starts calls in the order sent (the bundled shard): rule 2 holds by itself
    batch: CachedBatch | None = None  # the decode batch as of the last call sent (None: the shard has none)
    rows: dict[int, Row] = field(default_factory=dict)  # its requests, as of the last call sent
    calls: list[Call] = field(default_factory=list)  # in flight, in the order sent
    vanished: set[int] = field(default_factory=set)  # batch ids the shard dropped while calls named them

    # -- what the plan sees --------------------------------------------------------------------------------
    def view(self, joins_waiting: bool) -> PipelineView:
        kinds = tuple(c.kind for c in self.calls)
        behind = 0
        if "filter" in kinds:
            behind = sum(1 for k in kinds[kinds.index("filter") + 1 :] if k == "decode")
        rows = tuple(
            RowView(
                row.id,
                done=not row.entry.live,
                room=has_room(
                    row.entry.request.input_length,
                    row.tokens,
                    row.steps_in_flight,
                    row.capacity,
                    self.speculate,
                ),
            )
            for row in self.rows.values()
        )
        return PipelineView(rows, kinds, behind, self.unconfirmed_for() > 0, joins_waiting)

    def unconfirmed_for(self) -> float:
        """Seconds until the oldest call in flight has surely started (decode_plan rule 2); 0: it has, or
        there is none."""
        if self.ordered or not self.calls:
            return 0.0
        return max(0.0, self.calls[0].sent_at + DISPATCH_GRACE_S - asyncio.get_running_loop().time())

    def prompt_in_progress(self) -> bool:
        """A request of the batch, or one a call in flight brings to it, has prompt tokens left to compute
        (its first token has not come)."""
        rows = itertools.chain(self.rows.values(), (r for call in self.calls for r in call.rows))
        return any(row.tokens == 0 and row.entry.live for row in rows)

    # -- send ----------------------------------------------------------------------------------------------
    def decode(self) -> Call:
        assert self.batch is not None
        batch = self.batch
        return self._send("decode", batch.id, lambda: self.steps.start_decode([batch]))

    def join(
        self, new_batch: NewBatch | None, prefilled: tuple[CachedBatch, ...], entries: list[Entry]
    ) -> Call:
        """Step the batch with `new_batch`'s prompts (chunking shards) or `prefilled` batches (padded) joining
        it; creates the batch when there is none."""
        current = self.batch
        cached = ((current,) if current is not None else ()) + prefilled
        for entry in entries:
            allocation = entry.allocation
            self.rows[entry.id] = Row(entry, len(allocation.slots) if allocation is not None else None)
        ids = tuple(i for b in cached for i in b.request_ids)
        max_tokens = sum(b.max_tokens for b in cached)
        if new_batch is not None:
            ids += tuple(r.id for r in new_batch.requests)
            max_tokens += new_batch.max_tokens
            head = current
            start = lambda: self.steps.start_prefill(new_batch, head)  # noqa: E731
        else:
            start = lambda: self.steps.start_decode(cached)  # noqa: E731
        # NOTE: the shard keeps the first cached batch's id (else the new batch's).
        batch_id = cached[0].id if cached else new_batch.id  # type: ignore[union-attr]
        self.batch = CachedBatch(batch_id, ids, len(ids), max_tokens, len(ids))
        kind: CallKind = "join" if current is not None else "create"
        return self._send(kind, batch_id, start, new_batch=new_batch, prefilled=prefilled)

    def filter(self, remove: tuple[int, ...]) -> Call:
        """FilterBatch the batch down to all but `remove` (ClearCache when nothing stays)."""
        batch = self.batch
        assert batch is not None
        gone = set(remove)
        keep = tuple(i for i in batch.request_ids if i not in gone)
        removed = tuple(self.rows.pop(i) for i in remove)
        # NOTE: the shard keeps the batch's id; its capacity (max_tokens) is corrected by the answer.
        self.batch = replace(batch, request_ids=keep, size=len(keep)) if keep else None
        task = self.steps.start_filter(batch, keep)
        call = Call("filter", batch.id, removed, task, keep=keep)
        self._track(call)
        return call

    def _send(
        self, kind: CallKind, batch_id: int, start: Callable[[], Awaitable[StepResult]], **extra: Any
    ) -> Call:
        rows = tuple(self.rows.values())
        for row in rows:
            row.steps_in_flight += 1
        call = Call(kind, batch_id, rows, start(), **extra)
        self._track(call)
        return call

    def _track(self, call: Call) -> None:
        if not self.calls:
            self.vanished.clear()  # no call in flight names a dropped batch any more
        call.sent_at = asyncio.get_running_loop().time()
        self.calls.append(call)

    # -- receive -------------------------------------------------------------------------------------------
    async def receive(self) -> Call:
        """The oldest call in flight, once answered (its task is done: its result or exception is ready)."""
        call = self.calls[0]
        await asyncio.wait((call.task,))
        self.calls.pop(0)
        if call.kind != "filter":
            for row in call.rows:
                row.steps_in_flight -= 1
        return call

    async def vanished_later(self, batch_id: int) -> bool:
        """Whether a step sent after the oldest call, but run before it, dropped `batch_id` (a shard that
        started them in another order): waits for the calls in flight, reads their answers, leaves them."""
        if not self.calls:
            return False
        await asyncio.wait([c.task for c in self.calls])
        return any(
            c.kind != "filter"
            and c.batch_id == batch_id
            and not c.task.exception()
            and c.task.result().batch is None
            for c in self.calls
        )

    def count(self, result: StepResult) -> None:
        """Tokens each request got from an answered step (several with speculation)."""
        rows = self.rows
        for generation in result.generations:
            row = rows.get(generation.request_id)
            if row is not None:
                row.tokens += len(generation.tokens)

    def corrected(self, answer: CachedBatch) -> None:
        """A filter's answer: the batch's capacity as the shard computed it."""
        current = self.batch
        if current is not None and current.id == answer.id and current.request_ids == answer.request_ids:
            self.batch = answer

    def vanish(self, batch_id: int) -> list[Row]:
        """Every request of the batch finished in a step: the shard dropped it. Returns its rows."""
        if self.calls:
            self.vanished.add(batch_id)  # the calls in flight that name it will not find it: expected
        return self.clear()

    def withdraw(self, new_batch: NewBatch) -> None:
        """A call that brought `new_batch`'s prompts failed on them (before the shard took the batch it
        joins, on TGI's shards): they leave the batch and the calls in flight, the rest stays."""
        gone = {r.id for r in new_batch.requests}
        for request_id in gone:
            self.rows.pop(request_id, None)
        for call in self.calls:
            call.rows = tuple(r for r in call.rows if r.id not in gone)
        batch = self.batch
        if batch is not None:
            keep = tuple(i for i in batch.request_ids if i not in gone)
            max_tokens = batch.max_tokens - new_batch.max_tokens
            self.batch = replace(batch, request_ids=keep, size=len(keep), max_tokens=max_tokens)
            if not keep:
                self.batch = None

    def clear(self) -> list[Row]:
        """The batch is gone at the shard: forget it; returns its rows."""
        rows = list(self.rows.values())
        self.rows.clear()
        self.batch = None
        return rows
