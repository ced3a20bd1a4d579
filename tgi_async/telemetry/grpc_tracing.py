"""Trace context across gRPC: the router's client interceptor puts W3C `traceparent` in each call's metadata;
the bundled shard's server interceptor makes a SERVER span per RPC, named like TGI's shard
(`/generate.v3.TextGenerationService/Decode`), with the model's spans beneath.

Both are installed only when tracing is on (`client_interceptors()` / `server_interceptors()` return ()).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry import setup


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """For `grpc.aio.insecure_channel(..., interceptors=...)`: () when tracing is off."""
    return (TraceContextClientInterceptor(),) if setup.ENABLED else ()


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:
    """For `grpc.aio.server(interceptors=...)`: () when tracing is off."""
    return (ShardServerTracing(),) if setup.ENABLED else ()


class TraceContextClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `traceparent` (and `tracestate`) of the current span to every unary call's metadata."""

    def __init__(self) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._propagator = TraceContextTextMapPropagator()

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        if carrier:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *carrier.items())
            client_call_details = client_call_details._replace(metadata=metadata)
        return await continuation(client_call_details, request)


class ShardServerTracing(grpc.aio.ServerInterceptor):
    """One SERVER span per RPC, child of the caller's `traceparent` (a root span without one).

    For Prefill and Decode, the model's spans are placed from the timings the response carries
    (`total_ns`, `forward_ns`, `decode_ns`, `concat_ns`), so the shard's code needs no hooks:
    `concatenate` and `generate_token` end when the handler answers, and `tgi_async.shard.wait_ns` on the
    server span is the time the call waited behind others for the model thread.
    """

    def __init__(self) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._propagator = TraceContextTextMapPropagator()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not setup.ENABLED:
            return handler
        method = handler_call_details.method or ""
        service, _, name = method.lstrip("/").partition("/")
        metadata = {key: value for key, value in (handler_call_details.invocation_metadata or ())}
        parent = self._propagator.extract(metadata)
        inner = handler.unary_unary

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await _serve_traced(inner, request, context, method, service, name, parent, metadata)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _serve_traced(inner, request, context, method, service, name, parent, metadata) -> Any:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "net.transport": "unix",
    }
    if "user-agent" in metadata:
        attributes["rpc.user_agent"] = metadata["user-agent"]
    span = setup.tracer().start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    start = time.time_ns()
    try:
        response = await inner(request, context)
    except BaseException as exc:
        code = _status_code(context)
        span.set_attribute(
            "rpc.grpc.status_code", code.value[0] if code else grpc.StatusCode.UNKNOWN.value[0]
        )
        details = _details(context) or f"{type(exc).__name__}: {exc}"
        span.set_status(Status(StatusCode.ERROR, details))
        raise
    else:
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
        end = time.time_ns()
        total_ns = getattr(response, "total_ns", 0)
        if total_ns:
            _model_spans(span, response, start, end, total_ns)
        return response
    finally:
        otel_context.detach(token)
        span.end()


@setup.guarded()
def _model_spans(server_span, response, start: int, end: int, total_ns: int) -> None:
    """`concatenate` and `generate_token` under `server_span`, placed from the response's timings."""
    from opentelemetry import trace

    tracer = setup.tracer()
    compute_start = max(start, end - total_ns)
    forward_ns, decode_ns = response.forward_ns, response.decode_ns
    concat_ns = response.concat_ns if response.HasField("concat_ns") else None
    server_span.set_attributes(
        {
            a.SHARD_TOTAL_NS: total_ns,
            a.SHARD_FORWARD_NS: forward_ns,
            a.SHARD_DECODE_NS: decode_ns,
            a.SHARD_WAIT_NS: max(0, compute_start - start),
            a.STEP_GENERATIONS: len(response.generations),
        }
    )
    if concat_ns is not None:
        server_span.set_attribute(a.SHARD_CONCAT_NS, concat_ns)
    parent = trace.set_span_in_context(server_span)
    if concat_ns:
        concat = tracer.start_span(a.SPAN_CONCATENATE, context=parent, start_time=compute_start)
        concat.end(end_time=min(end, compute_start + concat_ns))
    step_start = max(compute_start, end - forward_ns - decode_ns)
    step = tracer.start_span(
        a.SPAN_GENERATE_TOKEN,
        context=parent,
        start_time=step_start,
        attributes={a.SHARD_FORWARD_NS: forward_ns, a.SHARD_DECODE_NS: decode_ns},
    )
    step.end(end_time=end)


def model_thread_ran(start_ns: int, end_ns: int) -> None:
    """The current RPC ran on the shard's model thread from `start_ns` to `end_ns` (wall clock): on its server
    span, how long it waited for the thread and ran there (the span's end comes later, when the event loop
    gets to the answer, so its end is not when the work ended)."""
    if not setup.ENABLED:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span_start = getattr(span, "start_time", None)
    if span_start is None or not span.is_recording():
        return
    span.set_attributes(
        {a.SHARD_MODEL_WAIT_NS: max(0, start_ns - span_start), a.SHARD_MODEL_RUN_NS: end_ns - start_ns}
    )


def _status_code(context) -> grpc.StatusCode | None:
    try:
        return context.code()
    except Exception:
        return None


def _details(context) -> str | None:
    try:
        details = context.details()
    except Exception:
        return None
    return details.decode() if isinstance(details, bytes) else details
