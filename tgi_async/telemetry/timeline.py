"""A run as lanes over time, built from exported spans (pure: spans in, plain data out).

Shard lanes (one per shard process): each Prefill / Decode the shard computed, from its server spans (the
compute window is the end of the span minus `tgi_async.shard.total_ns`; the rest is time the call waited
behind others). Without shard spans (e.g. TGI's own shard exporting elsewhere) one lane shows the steps as
the router saw them. Request lanes (one per request): queued, prefilling (admitted, no token yet), decoding,
a tick per step that gave it a token, and stalls: gaps between two of its tokens far longer than usual.
"""

from __future__ import annotations

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
    kind: str  # queued | prefilling | decoding | stall | prefill | decode | mixed | wait | filter
    label: str  # shown on hover


@dataclass(slots=True)
class Lane:
    name: str
    group: str  # "shard" or "request"
    segments: list[Segment] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)  # request lanes: when a token arrived


@dataclass(frozen=True, slots=True)
class Stall:
    request: str  # lane name
    start_ns: int
    end_ns: int
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
    request_lanes, stalls = _request_lanes(spans, steps, shard_lanes)
    lanes = shard_lanes + request_lanes
    if not lanes:
        raise EmptyTraceError(
            "no scheduler or shard spans in the trace (was the router run with --otlp-file?)"
        )
    start = min(seg.start_ns for lane in lanes for seg in lane.segments)
    end = max(seg.end_ns for lane in lanes for seg in lane.segments)
    stalls.sort(key=lambda s: s.start_ns - s.end_ns)
    return Timeline(start, end, lanes, stalls)


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
    for span in sorted(spans, key=lambda s: s.start_ns):
        if not span.name.startswith(SHARD_SPAN_PREFIX) or span.kind != 2:
            continue
        rpc = span.name[len(SHARD_SPAN_PREFIX) :]
        if rpc not in STEP_RPCS and (rpc not in ("FilterBatch", "ClearCache") or not span.parent_span_id):
            continue  # startup calls (Warmup, a first ClearCache) are not part of the run
        key = (span.service, span.instance)
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = Lane(f"shard {len(lanes)} ({span.service})", "shard")
        total = span.attributes.get(a.SHARD_TOTAL_NS)
        if rpc not in STEP_RPCS or not total:
            lane.segments.append(Segment(span.start_ns, span.end_ns, "filter", rpc))
            continue
        compute_start = max(span.start_ns, span.end_ns - total)
        kind, label = _step_kind(_router_step(span, by_id), rpc)
        if compute_start > span.start_ns:
            wait_ms = (compute_start - span.start_ns) / 1e6
            lane.segments.append(
                Segment(span.start_ns, compute_start, "wait", f"queued at the shard {wait_ms:.1f} ms")
            )
        lane.segments.append(Segment(compute_start, span.end_ns, kind, f"{label}; {total / 1e6:.2f} ms"))
    return list(lanes.values())


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
    busy = [seg for lane in shard_lanes for seg in lane.segments if seg.kind not in ("wait", "filter")]
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
            found.append(Stall(name, start, end, what))
    return found
