"""OpenTelemetry tracing for tgi-async: setup, request spans, scheduler decision spans, trace context over
gRPC, the OTLP JSON file export and `tgi-async timeline`. See docs/tracing.md.

Importing this package imports no OpenTelemetry code: that happens only when `setup_tracing` turns it on.
"""

from tgi_async.telemetry.setup import setup_from_args, setup_tracing, shutdown_tracing

__all__ = ["setup_from_args", "setup_tracing", "shutdown_tracing"]
