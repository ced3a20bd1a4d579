"""OTLP JSON (the OpenTelemetry protocol's JSON encoding) for the file export, and a reader for it.

One line per export: an `ExportTraceServiceRequest` with lowerCamelCase fields, hex trace and span ids and
integer enums, as the OpenTelemetry Collector's file exporter writes it, so files from either can be read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def encode_request(spans: Sequence[Any]) -> str:
    """SDK `ReadableSpan`s as one OTLP JSON line (no newline)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return json.dumps(request_to_dict(encode_spans(spans)), separators=(",", ":"))


def request_to_dict(request: Any) -> dict[str, Any]:
    """An `ExportTraceServiceRequest` protobuf as OTLP JSON (hex ids, integer enums)."""
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return data


def _hex_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        if name in obj:
            obj[name] = base64.b64decode(obj[name]).hex()


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span as read back from a file: ids in hex, times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # OTLP SpanKind: 1 internal, 2 server, 3 client
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    service: str  # the resource's service.name
    instance: str  # the resource's service.instance.id ("" if absent)
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = field(default=())


class TraceFileError(ValueError):
    """A trace file that is not OTLP JSON lines; the message names the file and line."""


def read_spans(paths: Iterable[str | Path]) -> list[SpanRecord]:
    """Every span in the OTLP JSON lines files `paths`, in file order."""
    spans: list[SpanRecord] = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise TraceFileError(f"{path}: {exc.strerror or exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                spans.extend(spans_of(json.loads(line)))
            except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
                raise TraceFileError(f"{path}:{number}: not an OTLP JSON trace export ({exc})") from None
    return spans


def spans_of(request: dict[str, Any]) -> Iterator[SpanRecord]:
    """The spans of one OTLP JSON export request."""
    for resource_spans in request.get("resourceSpans", ()):
        resource = attributes_of(resource_spans.get("resource", {}).get("attributes", ()))
        service = str(resource.get("service.name", ""))
        instance = str(resource.get("service.instance.id", ""))
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                yield SpanRecord(
                    trace_id=_id(span["traceId"]),
                    span_id=_id(span["spanId"]),
                    parent_span_id=_id(span.get("parentSpanId", "")),
                    name=span["name"],
                    kind=int(span.get("kind", 0)),
                    start_ns=int(span["startTimeUnixNano"]),
                    end_ns=int(span["endTimeUnixNano"]),
                    attributes=attributes_of(span.get("attributes", ())),
                    service=service,
                    instance=instance,
                    status_code=int(span.get("status", {}).get("code", 0)),
                    events=tuple(
                        SpanEvent(e["name"], int(e["timeUnixNano"]), attributes_of(e.get("attributes", ())))
                        for e in span.get("events", ())
                    ),
                    links=tuple(
                        SpanLink(_id(k["traceId"]), _id(k["spanId"]), attributes_of(k.get("attributes", ())))
                        for k in span.get("links", ())
                    ),
                )


def _id(value: str) -> str:
    """Hex as written by the Collector and by us; base64 (protobuf's own JSON mapping) is accepted too."""
    if not value:
        return ""
    try:
        int(value, 16)
    except ValueError:
        return base64.b64decode(value).hex()
    return value.lower()


def attributes_of(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: any_value(item.get("value", {})) for item in items}


def any_value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue as a Python value (arrays as tuples)."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return tuple(any_value(v) for v in value["arrayValue"].get("values", ()))
    if "kvlistValue" in value:
        return attributes_of(value["kvlistValue"].get("values", ()))
    return None
