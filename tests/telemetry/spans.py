"""Queries over received spans, for the tracing tests."""

from __future__ import annotations

from collections.abc import Iterable

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.otlp_json import SpanEvent, SpanRecord

SERVER, CLIENT = 2, 3
SHARD_PREFIX = "/generate.v3.TextGenerationService/"


class Spans:
    def __init__(self, spans: Iterable[SpanRecord]) -> None:
        self.all = list(spans)
        self.by_id = {s.span_id: s for s in self.all}

    def named(self, name: str, trace_id: str | None = None) -> list[SpanRecord]:
        return [s for s in self.all if s.name == name and (trace_id is None or s.trace_id == trace_id)]

    def one(self, name: str, trace_id: str) -> SpanRecord:
        found = self.named(name, trace_id)
        assert len(found) == 1, f"{len(found)} spans {name!r} in trace {trace_id}"
        return found[0]

    def children(self, span: SpanRecord, name: str | None = None) -> list[SpanRecord]:
        return [s for s in self.all if s.parent_span_id == span.span_id and (name is None or s.name == name)]

    def linked(self, span: SpanRecord) -> list[SpanRecord]:
        """Spans `span` links to (that were received)."""
        return [self.by_id[link.span_id] for link in span.links if link.span_id in self.by_id]

    def links_to(self, span: SpanRecord, target: SpanRecord) -> bool:
        return any(link.span_id == target.span_id and link.trace_id == target.trace_id for link in span.links)

    def fate(self, infer: SpanRecord) -> list[SpanEvent]:
        """`infer`'s events that stand for its links (admitted, merged, finished, filtered); one per link."""
        events = [e for e in infer.events if a.LINKED_SPAN_ID in e.attributes]
        linked = sorted((e.attributes[a.LINKED_TRACE_ID], e.attributes[a.LINKED_SPAN_ID]) for e in events)
        assert linked == sorted((link.trace_id, link.span_id) for link in infer.links)
        return events

    def linked_by(self, event: SpanEvent) -> SpanRecord | None:
        span = self.by_id.get(event.attributes[a.LINKED_SPAN_ID])
        return span if span is not None and span.trace_id == event.attributes[a.LINKED_TRACE_ID] else None

    def infer_of(self, trace_id: str) -> SpanRecord | None:
        found = self.named(a.SPAN_INFER, trace_id)
        return found[0] if len(found) == 1 and a.REQUEST_OUTCOME in found[0].attributes else None

    def filters(self, instance: str, finished: int | None = None) -> list[SpanRecord]:
        """`filter_batch` spans of one router process (request ids restart in each), optionally only those
        that removed request `finished` as finished."""
        return [
            f
            for f in self.named(a.SPAN_FILTER)
            if f.instance == instance
            and (finished is None or finished in f.attributes[a.FILTER_FINISHED_IDS])
        ]

    def steps(self) -> list[SpanRecord]:
        """The router's step spans: `batch` (a new batch) or `decode` (any other step)."""
        return [s for s in self.all if a.STEP_METHOD in s.attributes]

    def call_of(self, step: SpanRecord) -> SpanRecord | None:
        """The span current during the step's RPC: the step itself, or its `prefill` child (new batch)."""
        if step.kind == CLIENT:
            return step
        return next((c for c in self.children(step) if c.kind == CLIENT), None)

    def shard_call(self, step: SpanRecord) -> SpanRecord | None:
        """The shard's SERVER span under a router step span."""
        call = self.call_of(step)
        for server in self.children(call) if call is not None else ():
            if server.kind == SERVER and server.name.startswith(SHARD_PREFIX):
                return server
        return None
