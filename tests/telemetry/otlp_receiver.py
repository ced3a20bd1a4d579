"""A real OTLP/gRPC trace receiver for tests: opentelemetry-proto's TraceService on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tgi_async.telemetry.otlp_json import SpanRecord, request_to_dict, spans_of


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.spans: list[SpanRecord] = []
        self.requests = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        spans = list(spans_of(request_to_dict(request))) if self.keep else []
        with self.lock:
            self.spans.extend(spans)
            self.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects every span exported to `endpoint` (http://127.0.0.1:PORT); `keep=False` only counts
    export calls (a cheap sink for benchmarks)."""

    def __init__(self, keep: bool = True) -> None:
        self._collector = _Collector(keep)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._collector, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    @property
    def exports(self) -> int:
        return self._collector.requests

    @property
    def spans(self) -> list[SpanRecord]:
        with self._collector.lock:
            return list(self._collector.spans)

    def wait_for(
        self, condition: Callable[[list[SpanRecord]], bool], timeout: float = 20.0
    ) -> list[SpanRecord]:
        """Poll until `condition(spans)` holds; returns the spans (the last seen, on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if condition(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)
