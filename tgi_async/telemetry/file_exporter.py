"""`--otlp-file`: spans appended to a file as OTLP JSON lines, for people without a tracing backend."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tgi_async.telemetry.otlp_json import encode_request

logger = logging.getLogger(__name__)


class JsonLinesSpanExporter(SpanExporter):
    """Appends one OTLP JSON line per export batch.

    NOTE: each line goes out in one write() on an O_APPEND descriptor, so the router and its shards may
    share one file: lines from different processes interleave but never mix.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        line = (encode_request(spans) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                os.write(self._fd, line)
            except OSError as exc:
                logger.error("writing spans to %s failed: %s", self.path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
