"""OTLP JSON lines: what the file exporter writes reads back unchanged; bad files give a clear error."""

from __future__ import annotations

import base64
import json

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from tgi_async.telemetry.otlp_json import TraceFileError, encode_request, read_spans


def _spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc", "service.instance.id": "h:1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    first = tracer.start_span(
        "first", kind=SpanKind.SERVER, start_time=1_000, attributes={"s": "x", "f": 0.5}
    )
    first.end(end_time=2_000)
    second = tracer.start_span(
        "second",
        links=[Link(first.get_span_context(), {"why": "follows"})],
        start_time=3_000,
        attributes={"ints": (1, 2, 3), "flag": True, "n": 7},
    )
    second.add_event("ev", {"k": 1}, timestamp=3_500)
    second.end(end_time=4_000)
    return exporter.get_finished_spans()


def test_round_trip(tmp_path):
    sdk_spans = _spans()
    path = tmp_path / "t.jsonl"
    path.write_text(encode_request(sdk_spans) + "\n\n" + encode_request(sdk_spans[:1]) + "\n")
    spans = read_spans([path])
    assert [s.name for s in spans] == ["first", "second", "first"]
    first, second = spans[0], spans[1]
    assert first.trace_id == format(sdk_spans[0].context.trace_id, "032x")
    assert first.span_id == format(sdk_spans[0].context.span_id, "016x")
    assert (first.kind, first.start_ns, first.end_ns, first.parent_span_id) == (2, 1_000, 2_000, "")
    assert first.attributes == {"s": "x", "f": 0.5}
    assert (first.service, first.instance) == ("svc", "h:1")
    assert second.attributes == {"ints": (1, 2, 3), "flag": True, "n": 7}
    assert [(e.name, e.time_ns, e.attributes) for e in second.events] == [("ev", 3_500, {"k": 1})]
    (link,) = second.links
    assert (link.trace_id, link.span_id, link.attributes) == (
        first.trace_id,
        first.span_id,
        {"why": "follows"},
    )


def test_ids_are_hex_in_the_file_and_base64_is_accepted(tmp_path):
    data = json.loads(encode_request(_spans()))
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and int(span["traceId"], 16)
    span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
    path = tmp_path / "b64.jsonl"
    path.write_text(json.dumps(data))
    assert read_spans([path])[0].trace_id == bytes.fromhex(read_spans([path])[0].trace_id).hex()


def test_bad_files_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(encode_request(_spans()) + "\nnot json\n")
    with pytest.raises(TraceFileError, match=r"bad\.jsonl:2: not an OTLP JSON trace export"):
        read_spans([path])
    with pytest.raises(TraceFileError, match=r"missing\.jsonl"):
        read_spans([tmp_path / "missing.jsonl"])
