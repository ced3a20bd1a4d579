"""The timeline from hand-made spans: shard steps, request phases, token ticks, a stall during a prefill."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from tgi_async.cli import main
from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.otlp_json import SpanEvent, SpanRecord
from tgi_async.telemetry.timeline import build_timeline
from tgi_async.telemetry.timeline_render import render

MS = 1_000_000
_ids = itertools.count(1)


def _span(name, start, end, attrs=None, parent="", kind=1, service="router", events=(), trace="t"):
    return SpanRecord(
        trace_id=trace.ljust(32, "0"),
        span_id=format(next(_ids), "016x"),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=int(start * MS),
        end_ns=int(end * MS),
        attributes=attrs or {},
        service=service,
        instance=f"{service}:1",
        events=tuple(events),
    )


def _step(spans, seq, method, start, end, ids=None, prefill=0, decode=1, batch_id=0):
    attrs = {
        a.STEP_METHOD: method,
        a.STEP_SEQ: seq,
        a.BATCH_ID: batch_id,
        a.BATCH_SIZE: 1,
        a.STEP_PREFILL_TOKENS: prefill,
        a.STEP_DECODE_TOKENS: decode,
        a.STEP_GENERATIONS: 1,
        a.STEP_CALLS_IN_FLIGHT: 1,
        a.SHARD_TOTAL_NS: int((end - start - 0.2) * MS),
    }
    if ids is not None:
        attrs[a.BATCH_REQUEST_IDS] = ids
    if method == "prefill":  # a new batch: `batch` -> `prefill`; otherwise the step span is the call
        batch = _span(a.SPAN_BATCH, start, end, attrs, trace=f"s{seq}")
        call = _span(method, start, end, parent=batch.span_id, kind=3, trace=f"s{seq}")
        spans.append(batch)
    else:
        call = _span(method, start, end, attrs, kind=3, trace=f"s{seq}")
    rpc = "/generate.v3.TextGenerationService/" + method.capitalize()
    server = _span(
        rpc,
        start + 0.05,
        end - 0.05,
        {a.SHARD_TOTAL_NS: int((end - start - 0.5) * MS)},
        parent=call.span_id,
        kind=2,
        service="shard",
        trace=f"s{seq}",
    )
    spans += [call, server]


def _request(spans, request_id, queued, admitted, first, end, tokens):
    spans.append(_span(a.SPAN_QUEUED, queued, admitted, {a.REQUEST_ID: request_id}, trace=f"r{request_id}"))
    spans.append(
        _span(
            a.SPAN_INFER,
            admitted,
            end,
            {a.REQUEST_ID: request_id, a.REQUEST_OUTCOME: "finished", a.REQUEST_GENERATED_TOKENS: tokens},
            events=[SpanEvent(a.EVENT_FIRST_TOKEN, int(first * MS), {})],
            trace=f"r{request_id}",
        )
    )


@pytest.fixture
def spans() -> list[SpanRecord]:
    spans: list[SpanRecord] = []
    _request(spans, 0, 0, 1, 3, 21, 8)
    _step(spans, 0, "prefill", 1, 3, ids=(0,), prefill=5, decode=0)
    for seq, end in enumerate((5, 7, 9), 1):
        _step(spans, seq, "decode", end - 2, end)
    _request(spans, 1, 8, 9, 15, 21, 4)
    _step(spans, 4, "prefill", 9, 15, ids=(1,), prefill=300, decode=0, batch_id=1)  # a long prompt
    _step(spans, 5, "decode", 15, 17, ids=(0, 1))
    for seq, end in enumerate((19, 21), 6):
        _step(spans, seq, "decode", end - 2, end)
    return spans


def test_lanes_ticks_and_the_stall(spans):
    timeline = build_timeline(spans)
    (shard,) = timeline.shard_lanes
    kinds = [s.kind for s in shard.segments]
    assert kinds == ["prefill", "decode", "decode", "decode", "prefill", "decode", "decode", "decode"]
    first, second = timeline.request_lanes
    assert [s.kind for s in first.segments][:3] == ["queued", "prefilling", "decoding"]
    assert [t / MS for t in first.ticks] == [3, 5, 7, 9, 17, 19, 21]
    assert [t / MS for t in second.ticks] == [15, 17, 19, 21]
    (stall,) = timeline.stalls
    assert (stall.requests, stall.start_ns / MS, stall.end_ns / MS) == (("request 0",), 9, 17)
    assert "Prefill step 4" in stall.busy_with and "300 prompt" in stall.busy_with
    assert any(s.kind == "stall" for s in first.segments)
    assert (timeline.start_ns, timeline.end_ns) == (0, 21 * MS)


def test_router_view_when_the_shard_exported_nothing(spans):
    router_only = [s for s in spans if s.service == "router"]
    (lane,) = build_timeline(router_only).shard_lanes
    assert lane.name == "shards (router view)" and len(lane.segments) == 8


@pytest.mark.parametrize("suffix", ["html", "svg", "png"])
def test_render(spans, tmp_path, suffix):
    out = tmp_path / f"t.{suffix}"
    render(build_timeline(spans), out)
    data = out.read_bytes()
    if suffix == "png":
        assert data[:4] == b"\x89PNG"
    else:
        text = data.decode()
        assert "<svg" in text and "request 1" in text and "stalled 8.0 ms" in text


def test_png_needs_only_the_main_dependencies(spans, tmp_path):
    """`timeline -o x.png` on a default install: matplotlib is in [project] dependencies, not an extra."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    project = pyproject.split("[project]\n", 1)[1].split("\n[", 1)[0]
    main_deps = re.search(r"^dependencies = \[(.*?)^\]", project, re.S | re.M).group(1)
    assert re.search(r'^ *"matplotlib==[\d.]+"', main_deps, re.M)  # pinned, not in an extra
    out = tmp_path / "x.png"
    assert main(["timeline", str(_write_trace(spans, tmp_path)), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_trace(spans, tmp_path) -> Path:
    """`spans` as an OTLP JSON lines file (one line, one resource per service)."""
    resources = {}
    for s in spans:
        resource = resources.setdefault(
            s.service,
            {
                "resource": {
                    "attributes": [_kv("service.name", s.service), _kv("service.instance.id", s.instance)]
                },
                "scopeSpans": [{"spans": []}],
            },
        )
        resource["scopeSpans"][0]["spans"].append(
            {
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_span_id,
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": str(s.start_ns),
                "endTimeUnixNano": str(s.end_ns),
                "attributes": [_kv(k, v) for k, v in s.attributes.items()],
                "events": [
                    {"name": e.name, "timeUnixNano": str(e.time_ns), "attributes": []} for e in s.events
                ],
            }
        )
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps({"resourceSpans": list(resources.values())}) + "\n")
    return path


def _kv(key, value):
    if isinstance(value, tuple):
        return {"key": key, "value": {"arrayValue": {"values": [{"intValue": str(v)} for v in value]}}}
    kind = "stringValue" if isinstance(value, str) else "intValue"
    return {"key": key, "value": {kind: value if isinstance(value, str) else str(value)}}


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["timeline", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.html")]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["timeline", str(empty), "-o", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()
