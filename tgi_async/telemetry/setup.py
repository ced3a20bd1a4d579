"""Process-wide tracing setup: an OTLP/gRPC exporter (`--otlp-endpoint`), an OTLP JSON lines file
(`--otlp-file`), or nothing.

With neither, nothing is imported or installed: `ENABLED` stays False, every hook returns at once and the
interceptors and middleware are not installed, so tracing costs nothing measurable.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

ENABLED = False  # read by every hot-path hook; set once by setup_tracing
# router: a client's traceparent is the route span's parent, or only linked from a new root ("link")
CLIENT_CONTEXT = "parent"
INSTRUMENTATION_NAME = "tgi_async"
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def setup_tracing(service_name: str, endpoint: str | None = None, file_path: str | None = None) -> bool:
    """Export spans to `endpoint` (OTLP/gRPC, e.g. http://127.0.0.1:4317) and/or append them to `file_path`
    as OTLP JSON lines. Returns whether tracing is on. Calling it again replaces the previous setup."""
    global ENABLED, _provider, _tracer
    if not endpoint and not file_path:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    shutdown_tracing()
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "process.pid": os.getpid(),
        }
    )
    provider = TracerProvider(resource=resource)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not endpoint.startswith("https://")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        )
    if file_path:
        from tgi_async.telemetry.file_exporter import JsonLinesSpanExporter

        try:
            provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(file_path)))
        except OSError as exc:
            logger.error(
                "--otlp-file %s cannot be written (%s): spans are not written to a file", file_path, exc
            )
            if not endpoint:
                provider.shutdown()
                return False
    # NOTE: not installed as the global provider: FastAPI (0.165+) traces every request by itself as soon as a
    # global provider exists, which would double the route spans. Our spans use this provider directly.
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    ENABLED = True
    logger.info(
        "OpenTelemetry tracing on",
        extra={"service_name": service_name, "otlp_endpoint": endpoint, "otlp_file": file_path},
    )
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (also runs at interpreter exit)."""
    global ENABLED, _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    ENABLED = False
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    return _provider.force_flush(timeout_ms) if _provider is not None else True


def tracer() -> Tracer:
    """This process's tracer; only call it when `ENABLED`."""
    assert _tracer is not None, "setup_tracing() first"
    return _tracer


def setup_from_args(args: Any, default_service_name: str) -> bool:
    """`setup_tracing` from a process's `--otlp-endpoint`, `--otlp-service-name`, `--otlp-file` flags (and the
    router's `--otlp-client-context`)."""
    global CLIENT_CONTEXT
    CLIENT_CONTEXT = getattr(args, "otlp_client_context", None) or "parent"
    return setup_tracing(
        getattr(args, "otlp_service_name", None) or default_service_name,
        getattr(args, "otlp_endpoint", None),
        getattr(args, "otlp_file", None),
    )


def guarded(default: Any = None) -> Callable[[F], F]:
    """A hook that raises must not fail requests: log it (once per hook) and return `default`."""

    def decorate(hook: F) -> F:
        logged = False

        @functools.wraps(hook)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal logged
            try:
                return hook(*args, **kwargs)
            except Exception:
                if not logged:
                    logged = True
                    logger.exception("tracing hook %s failed; spans may be incomplete", hook.__qualname__)
                return default

        return wrapper  # type: ignore[return-value]

    return decorate
