"""Tracing off costs nothing (no tracer, interceptors or middleware); on, spans reach the OTLP JSON file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from tgi_async.telemetry import attributes as a
from tgi_async.telemetry import grpc_tracing, http, setup
from tgi_async.telemetry.otlp_json import read_spans
from tgi_async.telemetry.scheduler import NOOP, NOOP_FILTER, NOOP_STEP, scheduler_tracer


@pytest.fixture
def tracing_off() -> Iterator[None]:
    """Every test leaves tracing off for the rest of the session."""
    setup.shutdown_tracing()
    yield
    setup.shutdown_tracing()


def test_without_endpoint_or_file_nothing_is_installed(tracing_off):
    assert setup.setup_tracing("svc") is False
    assert setup.ENABLED is False
    assert scheduler_tracer(object()) is NOOP
    assert NOOP.step("decode", None, ()) is NOOP_STEP
    with NOOP_STEP.context():  # where an RPC starts: nothing attached
        pass
    assert NOOP.filtering(None, keep=[]) is NOOP_FILTER  # type: ignore[arg-type]
    assert tuple(grpc_tracing.client_interceptors()) == ()
    assert tuple(grpc_tracing.server_interceptors()) == ()
    app = FastAPI()
    http.install(app)
    assert app.user_middleware == []


async def test_traced_decorator_passes_through_when_off(tracing_off):
    @http.traced("validate")
    async def work(x: int) -> int:
        return x + 1

    assert await work(1) == 2
    http.rejected(1, 1)  # no current span, tracing off: nothing happens


def test_file_export_writes_otlp_json_lines(tracing_off, tmp_path):
    path = tmp_path / "spans.jsonl"
    assert setup.setup_tracing("svc-file", file_path=str(path)) is True
    assert scheduler_tracer(_State()) is not NOOP
    assert len(grpc_tracing.client_interceptors()) == 1
    tracer = setup.tracer()
    with tracer.start_as_current_span("outer", attributes={a.BATCH_REQUEST_IDS: (1, 2)}) as outer:
        with tracer.start_as_current_span("inner") as inner:
            inner.add_event(a.EVENT_DEFER, {a.DEFER_REASON: "blocks"})
    setup.shutdown_tracing()
    lines = path.read_text().splitlines()
    assert lines and all(json.loads(line)["resourceSpans"] for line in lines)
    spans = {s.name: s for s in read_spans([path])}
    assert (
        spans["inner"].parent_span_id
        == spans["outer"].span_id
        == format(outer.get_span_context().span_id, "016x")
    )
    assert spans["outer"].trace_id == format(outer.get_span_context().trace_id, "032x")
    assert spans["outer"].attributes[a.BATCH_REQUEST_IDS] == (1, 2)
    assert spans["inner"].events[0].attributes == {a.DEFER_REASON: "blocks"}
    assert spans["outer"].service == "svc-file"


def test_unwritable_file_is_reported_not_raised(tracing_off, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert setup.setup_tracing("svc", file_path=str(tmp_path / "missing" / "x.jsonl")) is False
    assert setup.ENABLED is False
    assert "--otlp-file" in caplog.text


class _State:
    """What the active tracer reads from the scheduler state."""

    def __init__(self) -> None:
        self.waiting: tuple = ()
        self.running: dict = {}
        self.allocator = None


def test_a_failing_hook_is_logged_once_and_never_raises(caplog):
    calls = []

    @setup.guarded("fallback")
    def hook(x: int) -> str:
        calls.append(x)
        raise RuntimeError("bug in a hook")

    with caplog.at_level(logging.ERROR):
        assert hook(1) == "fallback" and hook(2) == "fallback"
    assert calls == [1, 2]
    assert caplog.text.count("tracing hook") == 1
