"""`--otlp-client-context`: a client's traceparent as the route span's parent (TGI's behaviour, the default)
or only linked from a new root, so backends that list root spans (Phoenix) list the request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.telemetry.conftest import TracedStack, random_traceparent, start_traced_stack, stop_stack
from tests.telemetry.otlp_receiver import OtlpReceiver
from tests.telemetry.spans import Spans
from tgi_async.telemetry import attributes as a


@pytest.fixture(scope="module")
def linking_stack(tiny_model_dir: Path, otlp_receiver: OtlpReceiver) -> Iterator[TracedStack]:
    stack = start_traced_stack(
        tiny_model_dir, otlp_receiver, "--otlp-client-context", "link", with_file=False
    )
    yield stack
    stop_stack(stack)


def test_link_makes_the_request_a_root_linked_to_the_client(linking_stack: TracedStack):
    header, client_trace, client_span = random_traceparent()
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 3}}
    response = httpx.post(
        linking_stack.url + "/generate", json=body, headers={"traceparent": header}, timeout=60
    )
    assert response.status_code == 200, response.text

    def arrived(received) -> bool:
        spans = Spans(received)
        return any(
            link.trace_id == client_trace for s in spans.named("generate") for link in s.links
        ) and any(s.name == a.SPAN_INFER and a.REQUEST_OUTCOME in s.attributes for s in spans.all)

    spans = Spans(linking_stack.receiver.wait_for(arrived, timeout=30))
    (route,) = [s for s in spans.named("generate") if any(k.trace_id == client_trace for k in s.links)]
    assert route.parent_span_id == "" and route.trace_id != client_trace  # a root: listed by Phoenix
    (link,) = route.links
    assert (link.span_id, link.attributes) == (client_span, {a.LINK_KIND: "client traceparent"})
    infer = spans.one(a.SPAN_INFER, route.trace_id)  # the request's spans follow the new root
    assert spans.by_id[infer.parent_span_id] is route
    assert not [s for s in spans.all if s.trace_id == client_trace]
