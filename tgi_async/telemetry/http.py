"""Request spans at the HTTP edge: W3C `traceparent` in, a SERVER span per generation route out.

`install(app)` adds `TraceRequests` as the outermost ASGI middleware when tracing is on (nothing otherwise).
Span names are the names of TGI's route handlers, so traces from both routers look alike.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry import setup

T = TypeVar("T")

# POST path -> TGI's span name (its handler's name). GET routes (health, info, metrics) are not traced.
ROUTE_SPANS = {
    "/": "compat_generate",
    "/generate": "generate",
    "/generate_stream": "generate_stream",
    "/v1/chat/completions": "chat_completions",
    "/v1/completions": "completions",
    "/vertex": "vertex_compatibility",
    "/invocations": "sagemaker_compatibility",
    "/tokenize": "tokenize",
    "/chat_tokenize": "get_chat_tokenize",
}
_PROPAGATED = (b"traceparent", b"tracestate")


def install(app: Any) -> None:
    """Add the request-span middleware to a Starlette/FastAPI app (call it after every other middleware)."""
    if setup.ENABLED:
        app.add_middleware(TraceRequests)


class TraceRequests:
    """Opens the route span (child of the client's `traceparent`, if any) and makes it current for the
    request, so scheduler spans made while serving it join the client's trace. Records the status code and
    TGI's x-* timing headers. With `--otlp-client-context link` the route span is a new root that links the
    client's span instead (backends that list only root spans, e.g. Phoenix, then list the request)."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = (
            ROUTE_SPANS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        if name is None or not setup.ENABLED:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        carrier = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED}
        parent = self._propagator.extract(carrier)
        links = None
        if setup.CLIENT_CONTEXT == "link":
            client = trace.get_current_span(parent).get_span_context()
            if client.is_valid:
                links = [Link(client, {a.LINK_KIND: "client traceparent"})]
                parent = Context()
        span = setup.tracer().start_span(
            name,
            context=parent,
            links=links,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": scope["path"],
                "url.path": scope["path"],
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _record_headers(span, message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            if status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            otel_context.detach(token)
            span.end()


def _record_headers(span: Any, headers: Any) -> None:
    for key, value in headers:
        name = a.HTTP_TIMINGS.get(key.decode("latin-1").lower())
        if name is not None:
            try:
                span.set_attribute(name, int(value))
            except ValueError:
                pass


def traced(name: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate a coroutine function to run inside a span `name` (a child of the current span) when tracing
    is on; an exception marks the span as an error."""

    def decorate(function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            if not setup.ENABLED:
                return await function(*args, **kwargs)
            with setup.tracer().start_as_current_span(name):
                return await function(*args, **kwargs)

        return wrapper

    return decorate


def rejected(in_flight: int, limit: int, reason: str = "overloaded") -> None:
    """The request was refused (429): a `reject` event on the current (route) span."""
    if not setup.ENABLED:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(
        a.EVENT_REJECT, {a.REJECT_REASON: reason, a.REJECT_IN_FLIGHT: in_flight, a.REJECT_LIMIT: limit}
    )
