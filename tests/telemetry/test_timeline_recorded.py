"""The timeline of a recorded real run (router + bundled shard, async scheduler: two calls in flight, filters
queued behind steps): what the shard lane draws is what the shard measured."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.otlp_json import SpanRecord, read_spans
from tgi_async.telemetry.timeline import SHARD_SPAN_PREFIX, Lane, build_timeline

TRACE = Path(__file__).parents[1] / "data" / "traces" / "async_6_requests.jsonl"
COMPUTE = {"prefill", "decode", "mixed"}
RESOLUTION_NS = 10_000


@pytest.fixture(scope="module")
def spans() -> list[SpanRecord]:
    return read_spans([TRACE])


def _painted(lane: Lane, start: int, end: int) -> np.ndarray:
    """The kind on top at each 10 µs of [start, end), painting segments in order as the renderers do."""
    kinds = np.full((end - start) // RESOLUTION_NS + 1, "", dtype=object)
    for seg in lane.segments:
        kinds[(seg.start_ns - start) // RESOLUTION_NS : (seg.end_ns - start) // RESOLUTION_NS] = seg.kind
    return kinds


def test_shard_lane_draws_the_compute_the_shard_measured(spans):
    (lane,) = build_timeline(spans).shard_lanes
    start = min(s.start_ns for s in lane.segments)
    end = max(s.end_ns for s in lane.segments)
    server = [s for s in spans if s.kind == 2 and s.name[len(SHARD_SPAN_PREFIX) :] in ("Prefill", "Decode")]
    measured = sum(s.attributes.get(a.SHARD_TOTAL_NS, 0) for s in server) / (end - start)
    painted = _painted(lane, start, end)
    drawn = np.isin(painted, list(COMPUTE)).mean()
    assert measured > 0.3  # two calls in flight keep this shard busy
    assert drawn == pytest.approx(measured, abs=0.03)


def test_without_the_shards_own_times_calls_are_still_drawn_one_at_a_time(spans):
    """TGI's shard reports total_ns but not when it ran a call: placed from span ends, still no overlap."""
    tgi_like = [
        dataclasses.replace(s, attributes={k: v for k, v in s.attributes.items() if "model_thread" not in k})
        for s in spans
    ]
    (lane,) = build_timeline(tgi_like).shard_lanes
    ordered = sorted(lane.segments, key=lambda s: s.start_ns)
    assert all(first.end_ns <= second.start_ns for first, second in itertools.pairwise(ordered))
    start, end = ordered[0].start_ns, max(s.end_ns for s in ordered)
    server = [s for s in spans if s.kind == 2 and s.name[len(SHARD_SPAN_PREFIX) :] in ("Prefill", "Decode")]
    measured = sum(s.attributes.get(a.SHARD_TOTAL_NS, 0) for s in server) / (end - start)
    drawn = np.isin(_painted(lane, start, end), list(COMPUTE)).mean()
    # an estimate: a span ends late when the shard's event loop is busy (here 55 % drawn, 58 % measured)
    assert drawn == pytest.approx(measured, abs=0.05)


def test_a_filter_queued_behind_a_step_starts_when_the_step_ended(spans):
    (lane,) = build_timeline(spans).shard_lanes
    filters = [s for s in lane.segments if s.kind == "filter"]
    compute = [s for s in lane.segments if s.kind in COMPUTE]
    assert filters
    for f in filters:
        assert not any(c.start_ns < f.end_ns and f.start_ns < c.end_ns for c in compute), f.label
        assert f.end_ns - f.start_ns < 5_000_000, f.label  # filtering the tiny model's batch: well under 5 ms
    sent = [s for s in spans if s.name.endswith(("/FilterBatch", "/ClearCache")) and s.parent_span_id]
    drawn = sum(f.end_ns - f.start_ns for f in filters)
    assert sum(s.end_ns - s.start_ns for s in sent) > 3 * drawn  # they did wait behind steps


def test_stalls_are_one_row_per_episode_and_lanes_are_labelled_by_service(spans):
    timeline = build_timeline(spans)
    assert [lane.name for lane in timeline.shard_lanes] == ["shard 0 (test.shard)"]
    marks = [
        (s.start_ns, s.end_ns) for lane in timeline.request_lanes for s in lane.segments if s.kind == "stall"
    ]
    assert len(timeline.stalls) < len(marks)  # several requests held up by one prefill: one row
    for first, second in itertools.pairwise(timeline.stalls):
        assert first.end_ns <= second.start_ns or second.end_ns <= first.start_ns
    assert sum(len(s.requests) for s in timeline.stalls) == len(marks)


def test_the_shard_lane_names_the_process_when_it_shares_the_routers_service_name(spans):
    renamed = [
        SpanRecord(**{**{f: getattr(s, f) for f in SpanRecord.__slots__}, "service": "tgi"}) for s in spans
    ]
    (lane,) = build_timeline(renamed).shard_lanes
    pid = next(s.instance for s in spans if s.service == "test.shard").rpartition(":")[2]
    assert lane.name == f"shard 0 (pid {pid})"
