"""Spans for the scheduler's decisions, when tracing is on (see `telemetry.scheduler` for the hooks).

Per request, in the trace of the HTTP request that sent it: `queued` (events `defer`), then `infer` from
admission to the end (events `chunk`, `first_token`). Per shard step, a root span `batch` with the call
span `prefill` / `decode` beneath it (the shard's server span is a child of that), and `admit` beneath the
`batch` of a prefill. `filter_batch` is a child of the last step of the batch it filters. Step spans link
the requests' `infer` spans; `infer` links back to the steps where it entered a batch (admission, merge)
and where it finished.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Status, StatusCode

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry import setup
from tgi_async.telemetry.scheduler import (
    NOOP_FILTER,
    NOOP_STEP,
    FilterHandle,
    SchedulerTracer,
    StepHandle,
)
from tgi_async.telemetry.setup import guarded
from tgi_async.telemetry.step_spans import ROOT, StepTrace

if TYPE_CHECKING:
    from tgi_async.client.types import CachedBatch, NewBatch, StepResult
    from tgi_async.scheduler.admission import AdmissionPlan, Budget
    from tgi_async.scheduler.decode_plan import DecodePlan
    from tgi_async.scheduler.entry import Entry
    from tgi_async.scheduler.isolation import IsolationPlan
    from tgi_async.scheduler.state import SchedulerState

MAX_PENDING_BATCHES = 64  # admitted batches whose prefill has not started yet (normally 0 or 1)


@dataclass(slots=True, eq=False)
class RequestTrace:
    """One request's spans, from queue entry to release."""

    parent: Context  # the HTTP request's context when it was queued
    input_length: int
    queued: Span
    infer: Span | None = None
    prompt_left: int = 0  # prompt tokens not yet computed (chunked prefill)
    defer_count: int = 0
    defer_reason: str | None = None
    got_token: bool = False
    outcome: str | None = None  # set when the infer span ended


class ActiveSchedulerTracer(SchedulerTracer):
    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.tracer = setup.tracer()
        self.requests: dict[int, RequestTrace] = {}
        self.pending: dict[int, Span] = {}  # batch id -> its `batch` span, opened at admission
        self.lineages: dict[int, SpanContext] = {}  # batch id -> its last step (parent of its filter spans)
        self.members: dict[int, tuple[int, ...]] = {}  # batch id -> request ids at its last step sent
        self.chunked: set[int] = set()  # requests whose prompt is still being computed in chunks
        self.next_tokens: dict[int, int] = {}  # batch id -> tokens of its next forward (the shard's answer)
        self.in_flight = 0
        self.seq = 0
        self.drain_start: int | None = None
        self.drain_calls = 0
        self.filter_reason: str | None = None

    # -- requests ----------------------------------------------------------------------------------------
    @guarded()
    def queued(self, entry: Entry) -> None:
        parent = otel_context.get_current()
        request = entry.request
        span = self.tracer.start_span(
            a.SPAN_QUEUED,
            context=parent,
            attributes={
                a.REQUEST_ID: entry.id,
                a.REQUEST_INPUT_TOKENS: request.input_length,
                a.REQUEST_MAX_NEW_TOKENS: request.stopping.max_new_tokens,
                a.QUEUE_SIZE: len(self.state.waiting),
            },
        )
        self.requests[entry.id] = RequestTrace(parent, request.input_length, span)

    @guarded()
    def released(self, request_id: int) -> None:
        self.chunked.discard(request_id)
        trace_ = self.requests.pop(request_id, None)
        if trace_ is None:
            return
        if trace_.infer is not None and trace_.outcome is None:
            entry = self.state.running.get(request_id)
            if entry is not None and entry.cancelled and not entry.ended:
                outcome = "cancelled"
            else:
                outcome = "failed"
                trace_.infer.set_status(Status(StatusCode.ERROR, "the request ended without a result"))
            self.end_infer(trace_, outcome)
        elif trace_.infer is None:
            trace_.queued.set_attribute(a.REQUEST_OUTCOME, "dropped")
            trace_.queued.end()

    def link_infer(
        self, trace_: RequestTrace, span: Span, event: str, attributes: dict[str, Any], now: int | None = None
    ) -> None:
        """Link the request's `infer` to `span` (a step or filter, in its own trace), and say so in an event
        on `infer` with `span`'s ids: backends that drop links (Phoenix) show the event with the request."""
        assert trace_.infer is not None
        context = span.get_span_context()
        trace_.infer.add_link(context)
        ids = {
            a.LINKED_TRACE_ID: format(context.trace_id, "032x"),
            a.LINKED_SPAN_ID: format(context.span_id, "016x"),
        }
        trace_.infer.add_event(event, {**attributes, **ids}, timestamp=now)

    def end_infer(self, trace_: RequestTrace, outcome: str, end: int | None = None) -> None:
        assert trace_.infer is not None
        trace_.outcome = outcome
        trace_.infer.set_attribute(a.REQUEST_OUTCOME, outcome)
        trace_.infer.end(end_time=end)

    # -- admission ---------------------------------------------------------------------------------------
    @guarded()
    def admission(self, plan: AdmissionPlan, budget: Budget, batch_id: int) -> None:
        now = time.time_ns()
        for request_id in plan.dropped:
            trace_ = self.requests.pop(request_id, None)
            if trace_ is not None:
                trace_.queued.set_attributes(
                    {a.REQUEST_OUTCOME: "dropped", a.DEFER_COUNT: trace_.defer_count}
                )
                trace_.queued.end(end_time=now)
        taken = {admission.id for admission in plan.admitted}.union(plan.dropped)
        allocator = self.state.allocator
        free_after = allocator.free_blocks if allocator is not None else -1
        allocated = sum(len(x.allocation.blocks) for x in plan.admitted if x.allocation is not None)
        budget_attributes = {
            a.BUDGET_PREFILL_TOKENS: budget.prefill_tokens,
            a.BUDGET_TOTAL_TOKENS: budget.total_tokens,
            a.BUDGET_MIN_SIZE: -1 if budget.min_size is None else budget.min_size,
            a.BUDGET_MAX_SIZE: -1 if budget.max_size is None else budget.max_size,
            a.BLOCKS_FREE_BEFORE: free_after + allocated if allocator is not None else -1,
            a.BLOCKS_FREE_AFTER: free_after,
            a.QUEUE_SIZE: len(self.state.waiting) - len(taken),
        }
        if plan.deferred is not None:
            self._defer(plan.deferred, taken, budget_attributes, now)
        if plan.admitted:
            self._admit(plan, budget, batch_id, budget_attributes, now)

    def _defer(self, reason: str, taken: set[int], budget_attributes: dict[str, Any], now: int) -> None:
        head = next((e for e in self.state.waiting if e.id not in taken), None)
        trace_ = self.requests.get(head.id) if head is not None else None
        if trace_ is None:
            return
        trace_.defer_count += 1
        if trace_.defer_reason != reason:  # one event per change of reason: a long wait stays readable
            trace_.defer_reason = reason
            trace_.queued.add_event(
                a.EVENT_DEFER, {a.DEFER_REASON: reason, **budget_attributes}, timestamp=now
            )

    def _admit(
        self, plan: AdmissionPlan, budget: Budget, batch_id: int, budget_attributes: dict[str, Any], now: int
    ) -> None:
        ids = tuple(x.id for x in plan.admitted)
        batch = self.tracer.start_span(
            a.SPAN_BATCH,
            context=ROOT,
            start_time=now,
            attributes={a.STEP_METHOD: "prefill", a.BATCH_ID: batch_id, a.TGI_BATCH_SIZE: len(ids)},
        )
        batch_context = trace.set_span_in_context(batch)
        decision: dict[str, Any] = {
            a.ADMIT_REQUEST_IDS: ids,
            a.ADMIT_COUNT: len(ids),
            a.ADMIT_DROPPED_IDS: plan.dropped,
            a.ADMIT_PREFILL_TOKENS: plan.prefill_tokens,
            a.ADMIT_DECODE_TOKENS: plan.decode_tokens,
            a.ADMIT_MAX_BLOCKS: plan.max_blocks,
            a.ADMIT_CACHED_TOKENS: sum(x.cache_len for x in plan.admitted),
            a.DEFER_REASON: plan.deferred or "",
            a.BUDGET_PREFILL_TOKENS_LEFT: max(0, budget.prefill_tokens - plan.prefill_tokens),
            a.BUDGET_TOTAL_TOKENS_LEFT: max(
                0, budget.total_tokens - plan.prefill_tokens - plan.decode_tokens
            ),
            **budget_attributes,
        }
        admit = self.tracer.start_span(
            a.SPAN_ADMIT, context=batch_context, start_time=now, attributes=decision
        )
        for admission in plan.admitted:
            trace_ = self.requests.get(admission.id)
            if trace_ is None:
                continue
            trace_.queued.set_attributes({a.REQUEST_BATCH_ID: batch_id, a.DEFER_COUNT: trace_.defer_count})
            trace_.queued.end(end_time=now)
            trace_.infer = self.tracer.start_span(
                a.SPAN_INFER,
                context=trace_.parent,
                start_time=now,
                attributes={
                    a.REQUEST_ID: admission.id,
                    a.REQUEST_BATCH_ID: batch_id,
                    a.REQUEST_CACHED_TOKENS: admission.cache_len,
                },
            )
            self.link_infer(trace_, batch, a.EVENT_ADMITTED, {a.BATCH_ID: batch_id, **decision}, now)
            batch.add_link(trace_.infer.get_span_context())
            admit.add_link(trace_.infer.get_span_context())
            if admission.chunk_len is not None:
                trace_.prompt_left = trace_.input_length - admission.chunk_len
                self.chunked.add(admission.id)
                chunk = {
                    a.CHUNK_REQUEST_ID: admission.id,
                    a.CHUNK_TOKENS: admission.chunk_len,
                    a.CHUNK_TOKENS_LEFT: trace_.prompt_left,
                }
                admit.add_event(a.EVENT_CHUNK, chunk, timestamp=now)
                trace_.infer.add_event(a.EVENT_CHUNK, chunk, timestamp=now)
        admit.end(end_time=time.time_ns())
        if len(self.pending) >= MAX_PENDING_BATCHES:  # a batch admitted and never prefilled: a bug elsewhere
            stale_id = next(iter(self.pending))
            self.pending.pop(stale_id).end()
        self.pending[batch_id] = batch

    # -- steps -------------------------------------------------------------------------------------------
    @guarded(NOOP_STEP)
    def step(self, method: str, new_batch: NewBatch | None, cached: Sequence[CachedBatch]) -> StepHandle:
        self.in_flight += 1
        self.seq += 1
        step = StepTrace(self, method, self.seq - 1)
        step.sent(new_batch, cached)
        return step

    def step_ended(self, step: StepTrace, result: StepResult | None) -> None:
        """Remember the step as the last of its batch (the parent of a filter that follows it)."""
        self.in_flight -= 1
        for batch_id in step.batch_ids:
            self.lineages.pop(batch_id, None)
        if step.batch_span is not None and result is not None and result.batch is not None:
            self.lineages[result.batch.id] = step.batch_span.get_span_context()

    @guarded()
    def isolating(self, batch_id: int, plan: IsolationPlan) -> None:
        """An event on each request's infer span: its group's retry, or that it failed alone."""
        now = time.time_ns()
        groups = [(group, "retry") for group in plan.retry] + [(plan.fail, "fail")]
        for group, action in groups:
            for request_id in group:
                trace_ = self.requests.get(request_id)
                if trace_ is not None and trace_.infer is not None:
                    attributes = {
                        a.ISOLATE_ACTION: action,
                        a.ISOLATE_LEVEL: plan.level,
                        a.ISOLATE_FAILED_BATCH_ID: batch_id,
                    }
                    trace_.infer.add_event(a.EVENT_ISOLATE, attributes, timestamp=now)

    # -- filtering ---------------------------------------------------------------------------------------
    @guarded()
    def decode_plan(self, plan: DecodePlan, in_flight: int) -> None:
        if plan.action == "receive" and plan.remove:  # a filter waits for the calls in flight to answer
            if self.drain_start is None:
                self.drain_start = time.time_ns()
            self.drain_calls += 1
            self.filter_reason = plan.reason
        elif plan.action == "filter":
            self.filter_reason = plan.reason
        elif plan.action != "receive":
            self.drain_start, self.drain_calls, self.filter_reason = None, 0, None

    @guarded(NOOP_FILTER)
    def filtering(
        self,
        batch: CachedBatch,
        keep: Sequence[int] | None = None,
        remove: Sequence[int] | None = None,
    ) -> FilterHandle:
        if remove is None:
            kept = set(keep or ())
            remove = [i for i in batch.request_ids if i not in kept]
        groups = self.filter_groups(remove)
        links = []
        for request_id in remove:
            trace_ = self.requests.get(request_id)
            if trace_ is not None and trace_.infer is not None:
                links.append(Link(trace_.infer.get_span_context()))
        now = time.time_ns()
        last_step = self.lineages.get(batch.id)
        parent = ROOT if last_step is None else trace.set_span_in_context(NonRecordingSpan(last_step))
        span = self.tracer.start_span(
            a.SPAN_FILTER,
            context=parent,
            start_time=self.drain_start or now,
            links=links,
            attributes={
                a.BATCH_ID: batch.id,
                a.BATCH_SIZE: batch.size,
                a.FILTER_REMOVED_IDS: tuple(remove),
                **groups,
                a.FILTER_DRAINED_CALLS: self.drain_calls,
            },
        )
        if self.filter_reason is not None:
            span.set_attribute(a.FILTER_REASON, self.filter_reason)
        for request_id in remove:  # still running (client left, length limit): in the request's trace too
            trace_ = self.requests.get(request_id)
            if trace_ is not None and trace_.infer is not None and trace_.outcome is None:
                self.link_infer(
                    trace_,
                    span,
                    a.EVENT_FILTERED,
                    {a.BATCH_ID: batch.id, a.FILTER_REASON: self.filter_reason or ""},
                )
        if self.drain_start is not None:
            span.add_event(
                a.EVENT_DRAIN,
                {a.FILTER_DRAINED_CALLS: self.drain_calls, a.STEP_CALLS_IN_FLIGHT: self.in_flight},
                timestamp=self.drain_start,
            )
        self.drain_start, self.drain_calls, self.filter_reason = None, 0, None
        return FilterTrace(self, span, batch.id, tuple(remove), len(batch.request_ids) - len(remove))

    def filter_groups(self, remove: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The removed requests by why they leave, as span attributes."""
        groups: dict[str, list[int]] = {"finished": [], "disconnected": [], "length_limit": [], "failed": []}
        for request_id in remove:
            entry = self.state.running.get(request_id)
            trace_ = self.requests.get(request_id)
            if entry is None:
                continue
            if entry.cancelled and not entry.ended:
                groups["disconnected"].append(request_id)
            elif entry.live:
                groups["length_limit"].append(request_id)
            elif trace_ is not None and trace_.outcome == "finished":
                groups["finished"].append(request_id)
            else:
                groups["failed"].append(request_id)
        return {
            a.FILTER_FINISHED_IDS: tuple(groups["finished"]),
            a.FILTER_DISCONNECTED_IDS: tuple(groups["disconnected"]),
            a.FILTER_LENGTH_LIMIT_IDS: tuple(groups["length_limit"]),
            a.FILTER_FAILED_IDS: tuple(groups["failed"]),
        }


class FilterTrace(FilterHandle):
    __slots__ = ("batch_id", "ended", "kept", "owner", "removed", "span")

    def __init__(
        self, owner: ActiveSchedulerTracer, span: Span, batch_id: int, removed: tuple[int, ...], kept: int
    ) -> None:
        self.owner = owner
        self.span = span
        self.batch_id = batch_id
        self.removed = removed
        self.kept = kept
        self.ended = False

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield  # the RPC starts here: its span is this one's child
        finally:
            otel_context.detach(token)

    @guarded()
    def done(self, new_batch: CachedBatch | None) -> None:
        if self.ended:
            return
        self.ended = True
        # NOTE: why they left, as of the answer: a filter queued behind steps in flight (shards that order
        # calls) saw those steps end the requests it took out at their length limit.
        self.span.set_attributes(self.owner.filter_groups(self.removed))
        self.span.set_attributes({a.FILTER_KEPT: self.kept, a.FILTER_CLEARED: new_batch is None})
        if new_batch is None:
            self.owner.lineages.pop(self.batch_id, None)
            self.owner.members.pop(self.batch_id, None)
            self.owner.next_tokens.pop(self.batch_id, None)
        else:
            self.owner.next_tokens[new_batch.id] = new_batch.current_tokens
        self.span.end()
