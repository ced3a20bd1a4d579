"""One shard step as spans, current while the RPC runs so the shard's server span becomes their child.

A step that prefills a new batch: `batch` (opened at admission, TGI's name) -> `admit` and `prefill` (the
call). Any other step: one span named after its RPC (`decode`; TGI nests it in a `batch` span, one span
halves the per-step cost). Links and the `tgi_async.batch.request_ids` list are written only where the
batch's membership changes (requests join with a prefill or a merge, leave by finishing), so a long decode
of a large batch does not pay per request per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.scheduler import StepHandle
from tgi_async.telemetry.setup import guarded

if TYPE_CHECKING:
    from tgi_async.client.types import CachedBatch, NewBatch, StepResult
    from tgi_async.telemetry.scheduler_spans import ActiveSchedulerTracer

ROOT = Context()  # parent of step spans: each step is its own trace, linked to its requests (as in TGI)
CLIENT = SpanKind.CLIENT


class StepTrace(StepHandle):
    __slots__ = (
        "batch_id",
        "batch_ids",
        "batch_span",
        "cached_ids",
        "cached_tokens",
        "call_span",
        "closed",
        "method",
        "new_tokens",
        "owner",
        "request_ids",
        "seq",
        "start_ns",
    )

    def __init__(self, owner: ActiveSchedulerTracer, method: str, seq: int) -> None:
        self.owner = owner
        self.method = method
        self.seq = seq
        self.start_ns = time.time_ns()
        self.batch_span: Span | None = None
        self.call_span: Span | None = None
        self.closed = False
        self.batch_id = -1  # the id the shard keeps after this step
        self.batch_ids: tuple[int, ...] = ()
        self.request_ids: tuple[int, ...] = ()
        self.cached_ids: tuple[int, ...] = ()  # requests already in the shard's batches
        self.cached_tokens: tuple[tuple[int, int], ...] = ()  # (batch id, tokens of its forward) as sent
        self.new_tokens = 0  # prompt tokens of the new batch

    # -- the call goes out -------------------------------------------------------------------------------
    @guarded()
    def sent(self, new_batch: NewBatch | None, cached: Sequence[CachedBatch]) -> None:
        if self.batch_span is not None:
            return
        owner = self.owner
        requests = owner.requests
        new_ids = tuple(r.id for r in new_batch.requests) if new_batch is not None else ()
        self.request_ids = new_ids + tuple(i for b in cached for i in b.request_ids)
        self.batch_ids = ((new_batch.id,) if new_batch is not None else ()) + tuple(b.id for b in cached)
        # the shard concatenates into the cached batch (Prefill) or the first batch (Decode)
        self.batch_id = cached[0].id if cached else (self.batch_ids[0] if self.batch_ids else -1)
        self.cached_ids = self.request_ids[len(new_ids) :]
        self.cached_tokens = tuple((b.id, b.current_tokens) for b in cached)
        if new_batch is not None:
            self.new_tokens = sum(
                r.chunk_len if r.chunk_len is not None else r.request.input_length - r.cache_len
                for r in new_batch.requests
            )
        attributes: dict[str, Any] = {
            a.STEP_METHOD: self.method,
            a.STEP_SEQ: self.seq,
            a.BATCH_ID: self.batch_id,
            a.BATCH_SIZE: len(self.request_ids),
            a.BATCH_MAX_TOKENS: sum(b.max_tokens for b in cached)
            + (new_batch.max_tokens if new_batch else 0),
            a.STEP_CALLS_IN_FLIGHT: owner.in_flight,
        }
        if len(self.batch_ids) > 1:
            attributes[a.BATCH_IDS] = self.batch_ids
        if owner.members.get(self.batch_id) != self.request_ids:  # written when membership changes
            attributes[a.BATCH_REQUEST_IDS] = self.request_ids
        for batch_id in self.batch_ids:
            owner.members.pop(batch_id, None)
        owner.members[self.batch_id] = self.request_ids

        pending = owner.pending.pop(new_batch.id, None) if new_batch is not None else None
        if pending is not None:  # a new batch: `batch` (opened at admission) -> `admit`, `prefill`
            step = pending
            step.set_attributes(attributes)
            call = owner.tracer.start_span(self.method, context=trace.set_span_in_context(step), kind=CLIENT)
        else:  # NOTE: one span per step (TGI nests `decode` in `batch`): it halves the per-step cost
            step = call = owner.tracer.start_span(
                self.method, context=ROOT, kind=CLIENT, start_time=self.start_ns, attributes=attributes
            )
        self.batch_span, self.call_span = step, call
        if len(self.batch_ids) > 1:
            step.add_event(
                a.EVENT_MERGE,
                {a.MERGE_BATCH_IDS: self.batch_ids, a.MERGE_REQUEST_COUNT: len(self.request_ids)},
            )
        if new_batch is None:  # requests of the batches after the first join it: linked both ways
            merged = {a.STEP_SEQ: self.seq, a.BATCH_ID: self.batch_id, a.MERGE_BATCH_IDS: self.batch_ids}
            for b in cached[1:]:
                for request_id in b.request_ids:
                    trace_ = requests.get(request_id)
                    if trace_ is not None and trace_.infer is not None and trace_.outcome is None:
                        owner.link_infer(trace_, step, a.EVENT_MERGED, merged, self.start_ns)
                        step.add_link(trace_.infer.get_span_context())

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        if self.call_span is None:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(self.call_span))
        try:
            yield  # the RPC starts here: the shard's server span is the call span's child
        finally:
            otel_context.detach(token)

    # -- the answer comes back ---------------------------------------------------------------------------
    @guarded()
    def done(self, result: StepResult) -> None:
        if not self._close():
            return
        now = time.time_ns()
        assert self.batch_span is not None and self.call_span is not None
        if self.call_span is not self.batch_span:
            self.call_span.end(end_time=now)
        owner = self.owner
        requests = owner.requests
        prefill_tokens, decode_tokens = self._count_tokens(result)
        finished = []
        for generation in result.generations:
            trace_ = requests.get(generation.request_id)
            if trace_ is None or trace_.infer is None or trace_.outcome is not None:
                continue
            if not trace_.got_token and generation.tokens:
                trace_.got_token = True
                trace_.prompt_left = 0
                owner.chunked.discard(generation.request_id)
                trace_.infer.add_event(a.EVENT_FIRST_TOKEN, timestamp=now)
            text = generation.generated_text
            if text is not None:
                finished.append(generation.request_id)
                step = {a.STEP_SEQ: self.seq, a.STEP_METHOD: self.method, a.BATCH_ID: self.batch_id}
                owner.link_infer(trace_, self.batch_span, a.EVENT_FINISHED, step, now)
                self.batch_span.add_link(trace_.infer.get_span_context())
                trace_.infer.set_attributes(
                    {
                        a.REQUEST_GENERATED_TOKENS: text.generated_tokens,
                        a.REQUEST_FINISH_REASON: text.finish_reason,
                    }
                )
                owner.end_infer(trace_, "finished", now)
        timings = result.timings
        attributes = {
            a.STEP_PREFILL_TOKENS: prefill_tokens,
            a.STEP_DECODE_TOKENS: decode_tokens,
            a.SHARD_FORWARD_NS: timings.forward_ns,
            a.SHARD_DECODE_NS: timings.decode_ns,
            a.SHARD_TOTAL_NS: timings.total_ns,
            a.STEP_GENERATIONS: len(result.generations),
            a.STEP_WALL_NS: now - self.start_ns,
        }
        if finished:
            attributes[a.STEP_FINISHED_IDS] = tuple(finished)
        if timings.concat_ns is not None:
            attributes[a.SHARD_CONCAT_NS] = timings.concat_ns
        self.batch_span.set_attributes(attributes)
        self.batch_span.end(end_time=now)
        owner.step_ended(self, result)
        for batch_id in self.batch_ids:
            owner.next_tokens.pop(batch_id, None)
        if result.batch is None:
            owner.members.pop(self.batch_id, None)
        else:
            owner.next_tokens[result.batch.id] = result.batch.current_tokens

    def _count_tokens(self, result: StepResult) -> tuple[int, int]:
        """(prompt tokens, decoding requests) of the step's forward; advances the chunked prompts it carried.

        NOTE: the shard picks the size of a continuing chunk; it is the batch's pending tokens less its
        decodes. A prompt that produced its first token had all its remaining tokens in this step.
        """
        requests = self.owner.requests
        if not self.owner.chunked:  # the common case: no prompt in chunks, O(1)
            return self.new_tokens, len(self.cached_ids)
        decode_tokens, prefilling = 0, []
        for request_id in self.cached_ids:
            trace_ = requests.get(request_id)
            if trace_ is not None and trace_.prompt_left > 0 and trace_.outcome is None:
                prefilling.append((request_id, trace_))
            else:
                decode_tokens += 1
        if not prefilling:
            return self.new_tokens, decode_tokens
        got_token = {g.request_id for g in result.generations if g.tokens}
        # NOTE: what the shard answered for these batches at their previous step (answers come in order, so
        # it describes this forward even when this step was sent before that answer); else what was sent.
        next_tokens = self.owner.next_tokens
        pending = sum(next_tokens.get(batch_id, tokens) for batch_id, tokens in self.cached_tokens)
        left = max(0, pending - decode_tokens)
        prefill_tokens = self.new_tokens
        for request_id, trace_ in prefilling:
            done = request_id in got_token
            tokens = trace_.prompt_left if done else max(0, min(left, trace_.prompt_left - 1))
            left = max(0, left - tokens)
            trace_.prompt_left -= tokens
            prefill_tokens += tokens
            chunk = {
                a.CHUNK_REQUEST_ID: request_id,
                a.CHUNK_TOKENS: tokens,
                a.CHUNK_TOKENS_LEFT: trace_.prompt_left,
            }
            assert self.batch_span is not None
            self.batch_span.add_event(a.EVENT_CHUNK, chunk, timestamp=self.start_ns)
            if trace_.infer is not None:
                trace_.infer.add_event(a.EVENT_CHUNK, chunk, timestamp=self.start_ns)
        return prefill_tokens, decode_tokens

    @guarded()
    def failed(self, exc: BaseException) -> None:
        if not self._close():
            return
        status = Status(StatusCode.ERROR, str(exc))
        assert self.batch_span is not None and self.call_span is not None
        self.call_span.record_exception(exc)
        for span in {self.call_span, self.batch_span}:
            span.set_status(status)
            span.end()
        for request_id in self.request_ids:
            trace_ = self.owner.requests.get(request_id)
            if trace_ is not None and trace_.infer is not None and trace_.outcome is None:
                trace_.infer.set_status(status)
        self.owner.step_ended(self, None)
        for batch_id in self.batch_ids:
            self.owner.members.pop(batch_id, None)

    def _close(self) -> bool:
        """False if the step was closed already (or never opened its spans)."""
        if self.closed or self.batch_span is None:
            return False
        self.closed = True
        return True
