"""The scheduler's tracing hooks: what the scheduler calls at each decision, and nothing else.

The scheduler holds one `SchedulerTracer` (`scheduler_tracer(state)`). With tracing off it is `NOOP`, whose
methods return at once, so a hook costs one method call. With tracing on it is
`tgi_async.telemetry.scheduler_spans.ActiveSchedulerTracer`, which turns the calls into spans.

Hook points (one line each):
  state.append        -> queued(entry)                          request enters the queue
  state.admit         -> admission(plan, budget, batch_id)      admit / defer / drop decision
  state.release       -> released(request_id)                   request leaves the shards
  StepRunner.start_*  -> step(method, new, cached) / filtering(batch, keep=): what the call carries; the RPC
                         starts inside `.context()`; then .done(...) or .failed(exc)
  async decode loop   -> decode_plan(plan, in_flight)
  a failed Prefill    -> isolating(batch_id, plan)               its requests retried apart, or failed alone

The hooks observe: the scheduler starts every call and task itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tgi_async.telemetry import setup

if TYPE_CHECKING:
    from tgi_async.client.types import CachedBatch, NewBatch, StepResult
    from tgi_async.scheduler.admission import AdmissionPlan, Budget
    from tgi_async.scheduler.decode_plan import DecodePlan
    from tgi_async.scheduler.entry import Entry
    from tgi_async.scheduler.isolation import IsolationPlan


class CallHandle:
    """One traced shard call; the no-op base does nothing."""

    __slots__ = ()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Start the RPC inside this: the shard's server span becomes the call's child."""
        yield


class StepHandle(CallHandle):
    __slots__ = ()

    def done(self, result: StepResult) -> None:
        """The shard answered."""

    def failed(self, exc: BaseException) -> None:
        """The call raised `exc`."""


class FilterHandle(CallHandle):
    __slots__ = ()

    def done(self, new_batch: CachedBatch | None) -> None:
        """FilterBatch / ClearCache answered (or failed and was handled)."""


NOOP_STEP = StepHandle()
NOOP_FILTER = FilterHandle()


class SchedulerTracer:
    """The hooks; this base (`NOOP`) does nothing."""

    def queued(self, entry: Entry) -> None:
        """`entry` joined the queue, in the context of the HTTP request that sent it."""

    def admission(self, plan: AdmissionPlan, budget: Budget, batch_id: int) -> None:
        """An admission round decided `plan` under `budget`; admitted requests form batch `batch_id`."""

    def released(self, request_id: int) -> None:
        """The request left the shards (its blocks are freed next)."""

    def step(self, method: str, new_batch: NewBatch | None, cached: Sequence[CachedBatch]) -> StepHandle:
        """A shard step carrying `new_batch` (Prefill) and `cached` batches is about to start."""
        return NOOP_STEP

    def decode_plan(self, plan: DecodePlan, in_flight: int) -> None:
        """The async decode loop planned `plan` with `in_flight` calls unanswered."""

    def isolating(self, batch_id: int, plan: IsolationPlan) -> None:
        """The Prefill of `batch_id` failed for a reason in its requests: `plan` retries or fails them."""

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
