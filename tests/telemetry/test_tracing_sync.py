"""The same tree from `--scheduler sync` (TGI's loop): a request joining a running batch is prefilled with
the cached batch (a merge on a chunking shard), and finished requests are filtered after the step."""

from __future__ import annotations

import threading
import time

import httpx

from tests.telemetry.conftest import SHARD_SERVICE, TracedStack, random_traceparent
from tests.telemetry.spans import Spans
from tgi_async.telemetry import attributes as a


def test_sync_scheduler_steps_merges_and_filters(traced_sync: TracedStack):
    parents = [random_traceparent() for _ in range(2)]
    statuses: list[int] = []

    def run(index: int, max_new_tokens: int, delay: float) -> None:
        time.sleep(delay)
        body = {"inputs": f"request number {index}", "parameters": {"max_new_tokens": max_new_tokens}}
        response = httpx.post(
            traced_sync.url + "/generate", json=body, headers={"traceparent": parents[index][0]}, timeout=120
        )
        statuses.append(response.status_code)

    threads = [
        threading.Thread(target=run, args=(0, 60, 0.0)),
        threading.Thread(target=run, args=(1, 10, 0.05)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    trace_ids = [p[1] for p in parents]

    def complete(received) -> bool:
        spans = Spans(received)
        infers = [spans.infer_of(t) for t in trace_ids]
        if not all(infers):
            return False
        second_filters = spans.filters(infers[1].instance, infers[1].attributes[a.REQUEST_ID])
        return all(
            i is not None and all(spans.shard_call(s) for s in spans.linked(i)) for i in infers
        ) and any(spans.children(f) for f in second_filters)

    spans = Spans(traced_sync.receiver.wait_for(complete, timeout=30))
    first, second = (spans.infer_of(t) for t in trace_ids)
    for infer in (first, second):
        assert infer.attributes[a.REQUEST_OUTCOME] == "finished"
        prefill = next(s for s in spans.linked(infer) if s.attributes[a.STEP_METHOD] == "prefill")
        assert spans.links_to(prefill, infer)
        assert spans.children(prefill, a.SPAN_ADMIT)
        server = spans.shard_call(prefill)
        assert server.name.endswith("/Prefill") and server.service == SHARD_SERVICE

    # the second request was prefilled together with the running batch: one step, a merge, both linked
    joining = next(s for s in spans.linked(second) if s.attributes[a.STEP_METHOD] == "prefill")
    assert [e.name for e in joining.events] == [a.EVENT_MERGE]
    assert len(joining.attributes[a.BATCH_IDS]) == 2
    assert set(joining.attributes[a.BATCH_REQUEST_IDS]) == {
        first.attributes[a.REQUEST_ID],
        second.attributes[a.REQUEST_ID],
    }
    assert joining.attributes[a.STEP_DECODE_TOKENS] == 1  # the running request decoded in the same forward

    # the second finished first: filtered out after its last step, FilterBatch under the decision
    second_id = second.attributes[a.REQUEST_ID]
    (filtered,) = spans.filters(second.instance, second_id)
    assert filtered.attributes[a.FILTER_KEPT] == 1 and not filtered.attributes[a.FILTER_CLEARED]
    assert spans.by_id[filtered.parent_span_id].attributes[a.STEP_FINISHED_IDS] == (second_id,)
    (rpc,) = spans.children(filtered)
    assert rpc.name.endswith("/FilterBatch") and rpc.service == SHARD_SERVICE
