"""A run as lanes over time, built from exported spans (pure: spans in, plain data out).

Shard lanes (one per shard process): each Prefill / Decode the shard computed and each FilterBatch /
ClearCache, placed by the shard's own times: when its model thread ran the call (bundled shard,
`tgi_async.shard.model_thread.*`), else the span's end less `tgi_async.shard.total_ns`, and for a filter
(no timings in its answer) not before the compute that preceded it ended, since a shard runs calls one at a
time, in order. The time a call waited behind others is only in the hover text: the shard was computing the
previous call then. Without shard spans (e.g. TGI's own shard exporting elsewhere)
one lane shows the steps as the router saw them. Request lanes (one per request): queued, prefilling
(admitted, no token yet), decoding, a tick per step that gave it a token, and stalls: gaps between two of its
tokens far longer than usual; stalls of several requests that overlap in time are one `Stall`.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.otlp_json import SpanRecord

SHARD_SPAN_PREFIX = "/generate.v3.TextGenerationService/"
STEP_RPCS = ("Prefill", "Decode")
STALL_FACTOR = 3.0  # a gap between two tokens this many times the request's median gap is a stall...
STALL_MIN_NS = 2_000_000  # ...and at least this long


@dataclass(frozen=True, slots=True)
class Segment:
    start_ns: int
    end_ns: int
    kind: str  # queued | prefilling | decoding | stall | prefill | decode | mixed | filter
    label: str  # shown on hover


@dataclass(slots=True)
class Lane:
    name: str
    group: str  # "shard" or "request"
    segments: list[Segment] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)  # request lanes: when a token arrived


@dataclass(frozen=True, slots=True)
class Stall:
    requests: tuple[str, ...]  # lane names of the requests it held up
    start_ns: int  # from the earliest of their gaps...
    end_ns: int  # ...to the latest
    busy_with: str  # what the shards computed meanwhile


@dataclass(frozen=True, slots=True)
class Timeline:
    start_ns: int
    end_ns: int
    lanes: list[Lane]
    stalls: list[Stall]  # longest first

    @property
    def shard_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.group == "shard"]

    @property
    def request_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.group == "request"]


class EmptyTraceError(ValueError):
    """The spans hold no scheduler or shard activity to draw."""


def build_timeline(spans: Sequence[SpanRecord]) -> Timeline:
    by_id = {s.span_id: s for s in spans}
    steps = sorted(
        (s for s in spans if a.STEP_METHOD in s.attributes),
        key=lambda s: s.start_ns,
    )
    shard_lanes = _shard_lanes(spans, by_id) or _router_step_lane(steps)
    request_lanes, gaps = _request_lanes(spans, steps, shard_lanes)
    lanes = shard_lanes + request_lanes
    if not lanes:
        raise EmptyTraceError(
            "no scheduler or shard spans in the trace (was the router run with --otlp-file?)"
        )
    start = min(seg.start_ns for lane in lanes for seg in lane.segments)
    end = max(seg.end_ns for lane in lanes for seg in lane.segments)
    stalls = _merge_stalls(gaps)
    stalls.sort(key=lambda s: s.start_ns - s.end_ns)
    return Timeline(start, end, lanes, stalls)


def _merge_stalls(gaps: Sequence[Stall]) -> list[Stall]:
    """One stall per episode: a prefill holds up every stream at once, which is one cause, not N."""
    merged: list[Stall] = []
    for gap in sorted(gaps, key=lambda g: g.start_ns):
        last = merged[-1] if merged else None
        if last is not None and gap.start_ns < last.end_ns:
            merged[-1] = Stall(
                last.requests + gap.requests,
                last.start_ns,
                max(last.end_ns, gap.end_ns),
                last.busy_with if len(last.busy_with) >= len(gap.busy_with) else gap.busy_with,
            )
        else:
            merged.append(gap)
    return merged


def _step_kind(step: SpanRecord | None, rpc: str) -> tuple[str, str]:
    """(kind, label) of a shard step: prefill, decode, or mixed (decodes with a prompt chunk)."""
    if step is None:
        return rpc.lower(), rpc
    attrs = step.attributes
    prefill, decode = attrs.get(a.STEP_PREFILL_TOKENS, 0), attrs.get(a.STEP_DECODE_TOKENS, 0)
    kind = "mixed" if prefill and decode else "prefill" if prefill else "decode"
    label = (
        f"{rpc} step {attrs.get(a.STEP_SEQ, '?')}: batch {attrs.get(a.BATCH_ID, '?')}, "
        f"{attrs.get(a.BATCH_SIZE, '?')} requests, {prefill} prompt + {decode} decode tokens, "
        f"{attrs.get(a.STEP_CALLS_IN_FLIGHT, '?')} calls in flight"
    )
    return kind, label


def _router_step(span: SpanRecord, by_id: dict[str, SpanRecord]) -> SpanRecord | None:
    """The router's step span above a shard server span: its parent (`decode`), or the parent's parent
    (`batch` -> `prefill`)."""
    call = by_id.get(span.parent_span_id)
    if call is None or a.STEP_METHOD in call.attributes:
        return call
    step = by_id.get(call.parent_span_id)
    return step if step is not None and a.STEP_METHOD in step.attributes else None


def _shard_lanes(spans: Sequence[SpanRecord], by_id: dict[str, SpanRecord]) -> list[Lane]:
    lanes: dict[tuple[str, str], Lane] = {}
    compute_end: dict[tuple[str, str], int] = {}  # lane -> when its latest compute ended
    routers = {s.service for s in spans if a.STEP_METHOD in s.attributes}
    for span in sorted(spans, key=lambda s: s.start_ns):
        if not span.name.startswith(SHARD_SPAN_PREFIX) or span.kind != 2:
            continue
        rpc = span.name[len(SHARD_SPAN_PREFIX) :]
        if rpc not in STEP_RPCS and (rpc not in ("FilterBatch", "ClearCache") or not span.parent_span_id):
            continue  # startup calls (Warmup, a first ClearCache) are not part of the run
        key = (span.service, span.instance)
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = Lane(_shard_lane_name(len(lanes), span, routers), "shard")
        total = span.attributes.get(a.SHARD_TOTAL_NS)
        ran = _ran_on_model_thread(span)
        if rpc not in STEP_RPCS or not total:
            # NOTE: without the shard's own times, it ran after the compute before it (calls run in order)
            start, end = ran or (min(span.end_ns, max(span.start_ns, compute_end.get(key, 0))), span.end_ns)
            label = f"{rpc} {(end - start) / 1e6:.2f} ms (waited {(start - span.start_ns) / 1e6:.1f} ms)"
            lane.segments.append(Segment(start, end, "filter", label))
            continue
        start, end = ran or (max(span.start_ns, span.end_ns - total), span.end_ns)
        compute_end[key] = max(compute_end.get(key, 0), end)
        kind, label = _step_kind(_router_step(span, by_id), rpc)
        forward, decode = (
            span.attributes.get(a.SHARD_FORWARD_NS, 0),
            span.attributes.get(a.SHARD_DECODE_NS, 0),
        )
        label += (
            f"; shard: {total / 1e6:.2f} ms (forward {forward / 1e6:.2f}, decode {decode / 1e6:.2f}), "
            f"waited {(start - span.start_ns) / 1e6:.1f} ms behind other calls"
        )
        lane.segments.append(Segment(start, end, kind, label))
    for lane in lanes.values():
        lane.segments = _one_at_a_time(lane.segments)
    return list(lanes.values())


def _one_at_a_time(segments: list[Segment]) -> list[Segment]:
    """A shard runs one call at a time, in order. Where times estimated from span ends (shards that do not
    report when they ran a call) put two calls over each other, the later starts when the earlier ended,
    and a filter ends by the next compute."""
    ordered = sorted(segments, key=lambda seg: seg.start_ns)
    placed, busy_until = [], 0
    for index, seg in enumerate(ordered):
        start, end = max(seg.start_ns, busy_until), seg.end_ns
        if seg.kind == "filter":
            after = (s.start_ns for s in ordered[index + 1 :] if s.kind != "filter")
            end = min(end, next(after, end))
        end = max(start, end)
        placed.append(
            seg
            if (start, end) == (seg.start_ns, seg.end_ns)
            else dataclasses.replace(seg, start_ns=start, end_ns=end)
        )
        busy_until = max(busy_until, end)
    return placed


def _ran_on_model_thread(span: SpanRecord) -> tuple[int, int] | None:
    """When the bundled shard's model thread ran the call (None from shards that do not say)."""
    wait = span.attributes.get(a.SHARD_MODEL_WAIT_NS)
    run = span.attributes.get(a.SHARD_MODEL_RUN_NS)
    if wait is None or run is None:
        return None
    return span.start_ns + wait, span.start_ns + wait + run


def _shard_lane_name(index: int, span: SpanRecord, routers: set[str]) -> str:
    """The shard's own service.name; when it is a router's too (`launch` gives both one name, as TGI's
    launcher does), its process instead."""
    if span.service not in routers:
        return f"shard {index} ({span.service})"
    return f"shard {index} (pid {span.instance.rpartition(':')[2] or '?'})"


def _router_step_lane(steps: Sequence[SpanRecord]) -> list[Lane]:
    if not steps:
        return []
    lane = Lane("shards (router view)", "shard")
    for step in steps:
        total = step.attributes.get(a.SHARD_TOTAL_NS, 0)
        kind, label = _step_kind(step, str(step.attributes.get(a.STEP_METHOD, "step")).capitalize())
        lane.segments.append(Segment(max(step.start_ns, step.end_ns - total), step.end_ns, kind, label))
    return [lane]


def _request_lanes(
    spans: Sequence[SpanRecord], steps: Sequence[SpanRecord], shard_lanes: Sequence[Lane]
) -> tuple[list[Lane], list[Stall]]:
    queued: dict[tuple[str, int], SpanRecord] = {}
    infer: dict[tuple[str, int], SpanRecord] = {}
    for span in spans:
        if span.name in (a.SPAN_QUEUED, a.SPAN_INFER) and a.REQUEST_ID in span.attributes:
            key = (span.instance, span.attributes[a.REQUEST_ID])
            (queued if span.name == a.SPAN_QUEUED else infer)[key] = span
    token_times = _token_times(steps)
    busy = [seg for lane in shard_lanes for seg in lane.segments if seg.kind != "filter"]
    lanes, stalls = [], []
    for key in sorted(set(queued) | set(infer), key=lambda k: _first_start(queued.get(k), infer.get(k))):
        lane = Lane(f"request {key[1]}", "request")
        q, i = queued.get(key), infer.get(key)
        if q is not None:
            defers = [str(e.attributes.get(a.DEFER_REASON)) for e in q.events if e.name == a.EVENT_DEFER]
            why = f"; waited for: {', '.join(defers)}" if defers else ""
            lane.segments.append(
                Segment(q.start_ns, q.end_ns, "queued", f"queued {(q.end_ns - q.start_ns) / 1e6:.1f} ms{why}")
            )
        if i is not None:
            first = next((e.time_ns for e in i.events if e.name == a.EVENT_FIRST_TOKEN), None)
            outcome = i.attributes.get(a.REQUEST_OUTCOME, "?")
            if first is None:
                lane.segments.append(Segment(i.start_ns, i.end_ns, "prefilling", f"prefilling; {outcome}"))
            else:
                lane.segments.append(
                    Segment(
                        i.start_ns, first, "prefilling", f"prefilling {(first - i.start_ns) / 1e6:.1f} ms"
                    )
                )
                tokens = i.attributes.get(a.REQUEST_GENERATED_TOKENS, "?")
                lane.segments.append(
                    Segment(first, i.end_ns, "decoding", f"decoding: {tokens} tokens, {outcome}")
                )
                ticks = [t for t in token_times.get(key[1], ()) if first <= t <= i.end_ns]
                lane.ticks = ticks
                for stall in _stalls(lane.name, ticks, busy):
                    stalls.append(stall)
                    text = f"stalled {(stall.end_ns - stall.start_ns) / 1e6:.1f} ms: {stall.busy_with}"
                    lane.segments.append(Segment(stall.start_ns, stall.end_ns, "stall", text))
        lanes.append(lane)
    return lanes, stalls


def _first_start(*spans: SpanRecord | None) -> int:
    return min(s.start_ns for s in spans if s is not None)


def _token_times(steps: Sequence[SpanRecord]) -> dict[int, list[int]]:
    """Request id -> end times of the steps that carried it (membership is written when it changes)."""
    members: dict[int, tuple[int, ...]] = {}
    times: dict[int, list[int]] = defaultdict(list)
    for step in steps:
        attrs = step.attributes
        batch_id = attrs.get(a.BATCH_ID, -1)
        ids = attrs.get(a.BATCH_REQUEST_IDS)
        if ids is None:
            ids = members.get(batch_id, ())
        members[batch_id] = ids
        if attrs.get(a.STEP_DECODE_TOKENS, 0) or attrs.get(a.STEP_GENERATIONS, 0):
            for request_id in ids:
                times[request_id].append(step.end_ns)
    return times


def _stalls(name: str, ticks: Sequence[int], busy: Sequence[Segment]) -> list[Stall]:
    gaps = [(end - start, start, end) for start, end in itertools.pairwise(ticks)]
    if len(gaps) < 2:
        return []
    limit = max(STALL_MIN_NS, STALL_FACTOR * statistics.median(g for g, _, _ in gaps))
    found = []
    for gap, start, end in gaps:
        if gap > limit:
            during = [s for s in busy if s.end_ns > start and s.start_ns < end and s.kind != "decode"]
            what = (
                "; ".join(s.label for s in during[:3]) or "no prefill on the shards (router or client side)"
            )
            found.append(Stall((name,), start, end, what))
    return found
