"""The scheduler's tracing hooks: what the scheduler calls at each decision, and nothing else.

The scheduler holds one `SchedulerTracer` (`scheduler_tracer(state)`). With tracing off it is `NOOP`, whose
methods return at once, so a hook costs one method call. With tracing on it is
`tgi_async.telemetry.scheduler_spans.ActiveSchedulerTracer`, which turns the calls into spans.

Hook points (one line each):
  state.append        -> queued(entry)                       request enters the queue
  state.admit         -> admission(plan, budget, batch_id)   admit / defer / drop decision
  state.release       -> released(request_id)                request leaves the shards
  StepRunner.call     -> step(method), then .done(result) or .failed()
  ShardedClient       -> sent_prefill(batch, cached) / sent_decode(batches): what the step carries
  filters             -> filtering(batch, keep= | remove=), then .done(new_batch)
  async decode loop   -> decode_decision(decision, in_flight)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from tgi_async.telemetry import setup

if TYPE_CHECKING:
    from tgi_async.client.types import CachedBatch, NewBatch, StepResult
    from tgi_async.scheduler.admission import AdmissionPlan, Budget
    from tgi_async.scheduler.decode_plan import DecodeDecision
    from tgi_async.scheduler.entry import Entry

T = TypeVar("T")


class StepHandle:
    """One shard step being traced; the no-op base does nothing."""

    __slots__ = ()

    def sent(self, new_batch: NewBatch | None, cached: Sequence[CachedBatch]) -> None:
        """What the call carries (from the shard client, inside the step)."""

    def done(self, result: StepResult) -> None:
        """The shard answered."""

    def failed(self) -> None:
        """The call raised (reads the exception being handled)."""


class FilterHandle:
    __slots__ = ()

    def start(self, rpc: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run the filter's RPC in a task of its own (inside the filter's trace context when traced)."""
        return asyncio.ensure_future(rpc)

    def done(self, new_batch: CachedBatch | None) -> None:
        """FilterBatch / ClearCache answered (or failed and was handled)."""


NOOP_STEP = StepHandle()
NOOP_FILTER = FilterHandle()

# The step whose shard call runs in this task: the shard client annotates it (set by step(), reset at end).
CURRENT_STEP: ContextVar[StepHandle | None] = ContextVar("tgi_async_current_step", default=None)


class SchedulerTracer:
    """The hooks; this base (`NOOP`) does nothing."""

    def queued(self, entry: Entry) -> None:
        """`entry` joined the queue, in the context of the HTTP request that sent it."""

    def admission(self, plan: AdmissionPlan, budget: Budget, batch_id: int) -> None:
        """An admission round decided `plan` under `budget`; admitted requests form batch `batch_id`."""

    def released(self, request_id: int) -> None:
        """The request left the shards (its blocks are freed next)."""

    def step(self, method: str) -> StepHandle:
        """A shard step starts in this task; call `.done(result)` or `.failed()` on the handle."""
        return NOOP_STEP

    def decode_decision(self, decision: DecodeDecision, in_flight: int) -> None:
        """The async decode loop decided `decision` with `in_flight` calls unanswered."""

    def filtering(
        self,
        batch: CachedBatch,
        keep: Sequence[int] | None = None,
        remove: Sequence[int] | None = None,
    ) -> FilterHandle:
        """Requests leave `batch` (give `keep` or `remove`); call `.done(new_batch)` after the RPC."""
        return NOOP_FILTER


NOOP = SchedulerTracer()


def scheduler_tracer(state: Any) -> SchedulerTracer:
    """The tracer for one `SchedulerState`: `NOOP` unless tracing was set up before the scheduler."""
    if not setup.ENABLED:
        return NOOP
    from tgi_async.telemetry.scheduler_spans import ActiveSchedulerTracer

    return ActiveSchedulerTracer(state)


def sent_prefill(batch: NewBatch, cached_batch: CachedBatch | None) -> None:
    """Shard client hook: a Prefill is about to go out (annotates the current step, if traced)."""
    if setup.ENABLED and (step := CURRENT_STEP.get()) is not None:
        step.sent(batch, () if cached_batch is None else (cached_batch,))


def sent_decode(batches: Sequence[CachedBatch]) -> None:
    """Shard client hook: a Decode is about to go out (annotates the current step, if traced)."""
    if setup.ENABLED and (step := CURRENT_STEP.get()) is not None:
        step.sent(None, batches)
