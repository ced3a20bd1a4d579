"""A failed Prefill's requests retried apart (scheduler/isolation.py) are traced: an `isolate` event on each
request's infer span, `retry` for the groups prefilled again, `fail` for the one that failed alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.scheduler.strict_client import start_scheduler, strict
from tests.scheduler.test_isolation import POISON, outcome, request
from tgi_async.telemetry import attributes as a
from tgi_async.telemetry import setup
from tgi_async.telemetry.otlp_json import read_spans


@pytest.fixture
def tracing_off() -> Iterator[None]:
    """Every test leaves tracing off for the rest of the session."""
    setup.shutdown_tracing()
    yield
    setup.shutdown_tracing()


@pytest.mark.parametrize("policy", ["async", "sync"])
async def test_isolation_is_an_event_on_each_requests_infer_span(tracing_off, tmp_path, policy: str) -> None:
    path = tmp_path / "spans.jsonl"
    assert setup.setup_tracing("svc", file_path=str(path))
    shard = strict("flashinfer")
    shard.shard.refuse_prompts = (POISON,)
    scheduler = await start_scheduler(shard, policy)  # after setup: its tracer is the active one
    try:
        requests = [request("live0", 8, 4), request(POISON, 8, 4), request("live1", 8, 4)]
        results = await asyncio.wait_for(asyncio.gather(*(outcome(scheduler, r) for r in requests)), 30)
    finally:
        await scheduler.stop()
    setup.shutdown_tracing()
    assert [how for _, how in results][::2] == ["end", "end"]
    infers = {s.attributes[a.REQUEST_ID]: s for s in read_spans([path]) if s.name == a.SPAN_INFER}
    events = {
        request_id: [
            (e.attributes[a.ISOLATE_ACTION], e.attributes[a.ISOLATE_LEVEL])
            for e in span.events
            if e.name == a.EVENT_ISOLATE
        ]
        for request_id, span in infers.items()
    }
    live0, poison, live1 = sorted(events)
    # halves (0, 1) and (2,); (0, 1) fails again: (0,) and (1,); (1,) fails alone
    assert events[live0] == [("retry", 1), ("retry", 2)]
    assert events[poison] == [("retry", 1), ("retry", 2), ("fail", 2)]
    assert events[live1] == [("retry", 1)]
