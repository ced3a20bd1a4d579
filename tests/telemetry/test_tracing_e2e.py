"""End to end: a real router and bundled shard export to a real OTLP/gRPC receiver; the tests send requests
with a client `traceparent` and check the span tree the processes exported."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx

from tests.telemetry.conftest import ROUTER_SERVICE, SHARD_SERVICE, TracedStack, random_traceparent
from tests.telemetry.spans import CLIENT, SERVER, Spans
from tgi_async.launcher.processes import tgi_async_command
from tgi_async.telemetry import attributes as a
from tgi_async.telemetry.otlp_json import read_spans
from tgi_async.telemetry.timeline import build_timeline

LONG_PROMPT = " ".join(f"word{i}" for i in range(40))  # ~80 tokens: several 16-token chunks


def _generate(url: str, traceparent: str, inputs: str, max_new_tokens: int, path: str = "/generate"):
    body = {"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens}}
    return httpx.post(url + path, json=body, headers={"traceparent": traceparent}, timeout=120)


def _wait_requests(stack: TracedStack, trace_ids: list[str], extra=lambda spans: True) -> Spans:
    """Wait until every request's infer span and the step spans it links to (with shard spans) arrived."""

    def complete(received) -> bool:
        spans = Spans(received)
        for trace_id in trace_ids:
            infer = spans.infer_of(trace_id)
            if infer is None or len(spans.linked(infer)) < len(infer.links):
                return False
            if any(spans.shard_call(step) is None for step in spans.linked(infer)):
                return False
        return extra(spans)

    return Spans(stack.receiver.wait_for(complete, timeout=30))


def test_one_request_makes_one_trace_with_linked_steps_and_shard_spans(traced_async: TracedStack):
    header, trace_id, client_span_id = random_traceparent()
    response = _generate(traced_async.url, header, "hello world", 6)
    assert response.status_code == 200, response.text
    spans = _wait_requests(traced_async, [trace_id])

    # the request's own trace: the client's trace id, the route span under the client's span
    route = spans.one("generate", trace_id)
    assert route.kind == SERVER and route.parent_span_id == client_span_id
    assert route.service == ROUTER_SERVICE
    assert route.attributes["http.response.status_code"] == 200
    assert route.attributes[a.HTTP_TIMINGS["x-generated-tokens"]] == 6
    for name in (a.SPAN_VALIDATE, a.SPAN_QUEUED, a.SPAN_INFER):
        assert spans.one(name, trace_id).parent_span_id == route.span_id
    queued, infer = spans.one(a.SPAN_QUEUED, trace_id), spans.one(a.SPAN_INFER, trace_id)
    request_id = infer.attributes[a.REQUEST_ID]
    assert queued.attributes[a.REQUEST_ID] == request_id
    assert queued.attributes[a.REQUEST_MAX_NEW_TOKENS] == 6
    assert queued.end_ns <= infer.start_ns
    assert infer.attributes[a.REQUEST_OUTCOME] == "finished"
    assert infer.attributes[a.REQUEST_FINISH_REASON] == "length"
    assert infer.attributes[a.REQUEST_GENERATED_TOKENS] == 6
    assert [e.name for e in infer.events] == [a.EVENT_ADMITTED, a.EVENT_FIRST_TOKEN, a.EVENT_FINISHED]
    assert {s.trace_id for s in spans.all if s.parent_span_id == route.span_id} == {trace_id}

    # step spans: their own traces, linked both ways with the request
    steps = spans.linked(infer)
    assert steps and all(a.STEP_METHOD in s.attributes and s.trace_id != trace_id for s in steps)
    assert all(s.parent_span_id == "" for s in steps)
    assert all(spans.links_to(step, infer) for step in steps)
    prefill = next(s for s in steps if s.attributes[a.STEP_METHOD] == "prefill")
    last = next(s for s in steps if request_id in s.attributes.get(a.STEP_FINISHED_IDS, ()))
    assert prefill.name == a.SPAN_BATCH
    assert last.name == "decode" and last.attributes[a.STEP_METHOD] == "decode"

    # the admission decision, with its inputs
    (admit,) = spans.children(prefill, a.SPAN_ADMIT)
    assert request_id in admit.attributes[a.ADMIT_REQUEST_IDS]
    assert admit.attributes[a.BUDGET_PREFILL_TOKENS] == 16
    assert admit.attributes[a.BUDGET_MAX_SIZE] >= 1
    assert admit.attributes[a.BLOCKS_FREE_BEFORE] > admit.attributes[a.BLOCKS_FREE_AFTER] >= 0
    assert admit.attributes[a.ADMIT_PREFILL_TOKENS] == queued.attributes[a.REQUEST_INPUT_TOKENS]
    assert spans.links_to(admit, infer)
    assert prefill.attributes[a.STEP_PREFILL_TOKENS] == queued.attributes[a.REQUEST_INPUT_TOKENS]
    assert prefill.attributes[a.BATCH_REQUEST_IDS] == (request_id,)
    assert prefill.attributes[a.TGI_BATCH_SIZE] == 1

    # the same, inside the request's own trace, for backends that drop links (Phoenix): one event per link,
    # carrying the decision and the linked span's ids
    admitted, finished = spans.fate(infer)
    assert (admitted.name, finished.name) == (a.EVENT_ADMITTED, a.EVENT_FINISHED)
    assert spans.linked_by(admitted) is prefill and spans.linked_by(finished) is last
    assert {k: admitted.attributes[k] for k in admit.attributes} == admit.attributes
    assert finished.attributes[a.STEP_SEQ] == last.attributes[a.STEP_SEQ]

    # the shard's server spans sit under the router's call spans, in the step's trace
    for step, rpc in ((prefill, "Prefill"), (last, "Decode")):
        assert step.attributes[a.STEP_CALLS_IN_FLIGHT] >= 1
        # NOTE: not total >= forward: with the shard's overlap a decode's forward may start before its call
        # does (it ran ahead, from the previous step's tokens), so forward_ns can exceed the handler's time.
        assert step.attributes[a.SHARD_TOTAL_NS] > 0 and step.attributes[a.SHARD_FORWARD_NS] > 0
        call = spans.call_of(step)
        assert call is not None and call.name == rpc.lower() and call.kind == CLIENT
        server = spans.shard_call(step)
        assert server is not None and server.parent_span_id == call.span_id
        assert server.name == f"/generate.v3.TextGenerationService/{rpc}"
        assert server.service == SHARD_SERVICE and server.trace_id == step.trace_id
        assert server.attributes["rpc.method"] == rpc
        assert server.attributes[a.SHARD_TOTAL_NS] == step.attributes[a.SHARD_TOTAL_NS]
        (model_step,) = spans.children(server, a.SPAN_GENERATE_TOKEN)
        assert server.start_ns <= model_step.start_ns <= model_step.end_ns <= server.end_ns


def _wait_for_batch_size(url: str, size: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
            if line.startswith("tgi_batch_current_size ") and float(line.split()[1]) >= size:
                return
        time.sleep(0.002)
    raise AssertionError(f"the batch never reached {size} requests")


def test_decisions_defer_chunk_merge_and_filter(traced_async: TracedStack):
    """Three requests for a batch of at most 2: a long prompt cut into chunks, one that waits (defer) and
    joins the running batch later (merge), and finished requests filtered out."""
    parents = [random_traceparent() for _ in range(3)]
    jobs = [(LONG_PROMPT, 100, 0.0), ("a short one", 120, 0.02), ("another short one", 8, None)]
    responses: list[httpx.Response | None] = [None] * 3

    def run(index: int) -> None:
        inputs, max_new_tokens, delay = jobs[index]
        if delay is None:  # the third comes once both others run (however fast or slow this machine is)
            _wait_for_batch_size(traced_async.url, 2)
        else:
            time.sleep(delay)
        responses[index] = _generate(traced_async.url, parents[index][0], inputs, max_new_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None and r.status_code == 200 for r in responses), responses
    trace_ids = [p[1] for p in parents]

    def filtered(spans: Spans) -> bool:
        infers = [spans.infer_of(t) for t in trace_ids]
        return all(infers) and any(
            spans.children(f) for i in infers for f in spans.filters(i.instance, i.attributes[a.REQUEST_ID])
        )

    spans = _wait_requests(traced_async, trace_ids, filtered)
    long_infer, first_short, last_short = (spans.infer_of(t) for t in trace_ids)
    assert long_infer and first_short and last_short

    # chunk: the long prompt went in 16-token pieces until nothing was left
    prompt_tokens = spans.one(a.SPAN_QUEUED, trace_ids[0]).attributes[a.REQUEST_INPUT_TOKENS]
    chunks = [e.attributes for e in long_infer.events if e.name == a.EVENT_CHUNK]
    assert len(chunks) >= 3 and all(c[a.CHUNK_TOKENS] <= 16 for c in chunks)
    assert sum(c[a.CHUNK_TOKENS] for c in chunks) == prompt_tokens
    assert chunks[-1][a.CHUNK_TOKENS_LEFT] == 0
    assert [c[a.CHUNK_TOKENS_LEFT] for c in chunks] == sorted(
        (c[a.CHUNK_TOKENS_LEFT] for c in chunks), reverse=True
    )

    # defer: the third request waited for a batch slot (or the prefill budget), with the budget recorded
    defers = [e for t in trace_ids for e in spans.one(a.SPAN_QUEUED, t).events if e.name == a.EVENT_DEFER]
    assert defers, "no request was deferred"
    third_queued = spans.one(a.SPAN_QUEUED, trace_ids[2])
    third_defers = [e.attributes for e in third_queued.events if e.name == a.EVENT_DEFER]
    assert any(d[a.DEFER_REASON] == "max_size" for d in third_defers), third_defers
    assert third_queued.attributes[a.DEFER_COUNT] >= len(third_defers)

    # merge: a request prefilled on its own joined the running decode batch, linked both ways
    merges = [s for s in spans.steps() if any(e.name == a.EVENT_MERGE for e in s.events)]
    assert merges
    joined = [m for m in merges if spans.links_to(m, last_short) and spans.links_to(last_short, m)]
    assert joined, "the deferred request's merge step is not linked with it"
    merge_event = next(e for e in joined[0].events if e.name == a.EVENT_MERGE)
    # ...and in its own trace: `admitted` when it was prefilled into the running batch, else `merged`
    (event,) = [e for e in spans.fate(last_short) if spans.linked_by(e) is joined[0]]
    if event.name == a.EVENT_MERGED:
        assert event.attributes[a.MERGE_BATCH_IDS] == merge_event.attributes[a.MERGE_BATCH_IDS]
    else:
        assert event.name == a.EVENT_ADMITTED and joined[0].name == a.SPAN_BATCH
    assert len(merge_event.attributes[a.MERGE_BATCH_IDS]) >= 2
    assert spans.shard_call(joined[0]).attributes.get(a.SHARD_CONCAT_NS, 0) > 0

    # filter: finished requests left the batch; the FilterBatch RPC is a child of the decision
    request_ids = {s.attributes[a.REQUEST_ID] for s in (long_infer, first_short, last_short)}
    filters = [
        f
        for f in spans.filters(long_infer.instance)
        if request_ids & set(f.attributes[a.FILTER_FINISHED_IDS])
    ]
    assert filters
    for span in filters:
        assert span.attributes[a.FILTER_REASON] in ("length_limit", "finished", "all_finished")
        assert set(span.attributes[a.FILTER_REMOVED_IDS]) >= set(span.attributes[a.FILTER_FINISHED_IDS])
        parent = spans.by_id.get(span.parent_span_id)
        assert parent is not None and a.STEP_METHOD in parent.attributes and parent.trace_id == span.trace_id
        rpc = spans.children(span)
        assert rpc and rpc[0].service == SHARD_SERVICE
        assert rpc[0].name.rsplit("/", 1)[1] in ("FilterBatch", "ClearCache")


def test_overloaded_request_records_reject_and_disconnects_are_filtered(traced_async: TracedStack):
    """3 streams hold every permit: a 4th request gets 429 with a `reject` event; the streams then hang
    up and the scheduler filters them out as disconnected."""
    parents = [random_traceparent() for _ in range(3)]
    body = {"inputs": "stream me", "parameters": {"max_new_tokens": 2000}}
    client = httpx.Client(base_url=traced_async.url, timeout=60)
    streams = []
    try:
        for header, _, _ in parents:
            stream = client.stream("POST", "/generate_stream", json=body, headers={"traceparent": header})
            response = stream.__enter__()
            streams.append((stream, response))
        lines = [response.iter_lines() for _, response in streams]  # NOTE: dropping one closes its stream
        for stream_lines in lines[:2]:  # batch size 2: the third stays queued
            next(stream_lines)
        time.sleep(0.3)
        header, trace_id, _ = random_traceparent()
        refused = _generate(traced_async.url, header, "one more", 4)
        assert refused.status_code == 429, refused.text
        assert json.loads(refused.text)["error_type"] == "overloaded"
    finally:
        for stream, _ in streams:
            stream.__exit__(None, None, None)
        client.close()

    streamed = [p[1] for p in parents]

    def settled(spans: Spans) -> bool:
        cancelled = [spans.infer_of(t) for t in streamed[:2]]
        dropped = spans.named(a.SPAN_QUEUED, streamed[2])
        if not (all(cancelled) and spans.named("generate", trace_id)):
            return False
        filters = spans.filters(cancelled[0].instance)
        disconnected = {i for f in filters for i in f.attributes[a.FILTER_DISCONNECTED_IDS]}
        return {c.attributes[a.REQUEST_ID] for c in cancelled} <= disconnected and bool(
            dropped and a.REQUEST_OUTCOME in dropped[0].attributes
        )

    spans = Spans(traced_async.receiver.wait_for(lambda s: settled(Spans(s)), timeout=30))
    route = spans.one("generate", trace_id)
    assert route.attributes["http.response.status_code"] == 429
    (reject,) = [e for e in route.events if e.name == a.EVENT_REJECT]
    assert reject.attributes == {a.REJECT_REASON: "overloaded", a.REJECT_IN_FLIGHT: 3, a.REJECT_LIMIT: 3}
    assert not spans.named(a.SPAN_QUEUED, trace_id)  # refused before the scheduler saw it

    cancelled = [spans.infer_of(t) for t in streamed[:2]]
    assert [c.attributes[a.REQUEST_OUTCOME] for c in cancelled] == ["cancelled", "cancelled"]
    cancelled_ids = {c.attributes[a.REQUEST_ID] for c in cancelled}
    filters = spans.filters(cancelled[0].instance)
    disconnected = {i for f in filters for i in f.attributes[a.FILTER_DISCONNECTED_IDS]}
    assert cancelled_ids <= disconnected
    for infer in cancelled:  # the filter that took it out, from the request's own trace
        (event,) = [e for e in spans.fate(infer) if e.name == a.EVENT_FILTERED]
        filter_span = spans.linked_by(event)
        assert filter_span is not None and filter_span.name == a.SPAN_FILTER
        assert infer.attributes[a.REQUEST_ID] in filter_span.attributes[a.FILTER_DISCONNECTED_IDS]
    assert spans.one(a.SPAN_QUEUED, streamed[2]).attributes[a.REQUEST_OUTCOME] == "dropped"
    assert spans.one("generate_stream", streamed[0]).attributes["http.response.status_code"] == 200


def test_file_export_holds_router_and_shard_spans_and_draws_a_timeline(traced_async: TracedStack, tmp_path):
    header, trace_id, _ = random_traceparent()
    assert _generate(traced_async.url, header, "for the file", 5).status_code == 200

    def in_file() -> bool:
        try:
            spans = read_spans([traced_async.trace_file])
        except ValueError:  # a line being written
            return False
        return any(s.trace_id == trace_id and s.name == a.SPAN_INFER for s in spans)

    deadline = time.monotonic() + 30
    while not in_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    spans = read_spans([traced_async.trace_file])
    assert {ROUTER_SERVICE, SHARD_SERVICE} <= {s.service for s in spans}
    received = {s.span_id for s in traced_async.receiver.spans}
    assert {s.span_id for s in spans if s.trace_id == trace_id} <= received  # same spans both ways

    timeline = build_timeline(spans)
    assert len(timeline.shard_lanes) == 1
    assert len(timeline.request_lanes) >= 1
    assert any(seg.kind == "prefill" for seg in timeline.shard_lanes[0].segments)
    assert any(seg.kind == "decode" for seg in timeline.shard_lanes[0].segments)
    assert all(
        lane.ticks for lane in timeline.request_lanes if any(s.kind == "decoding" for s in lane.segments)
    )

    for suffix in ("html", "png"):
        out = tmp_path / f"timeline.{suffix}"
        done = subprocess.run(
            tgi_async_command("timeline", str(traced_async.trace_file), "-o", str(out)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 1000
    page = (tmp_path / "timeline.html").read_text()
    assert "<svg" in page and "shard 0" in page and "request " in page
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
