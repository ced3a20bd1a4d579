"""plan_decode: the async decode loop's pipelining rules."""

from __future__ import annotations

from dataclasses import replace

from tgi_async.scheduler.decode_plan import RequestView, plan_decode


def views(*specs: tuple[int, int, int, bool]) -> list[RequestView]:
    return [RequestView(*spec) for spec in specs]


def test_keeps_the_pipeline_full_until_depth() -> None:
    batch = views((0, 3, 10, True), (1, 5, 10, True))
    assert plan_decode(batch, in_flight=0, depth=2, has_ready=False, filter_threshold=1).action == "decode"
    assert plan_decode(batch, in_flight=1, depth=2, has_ready=False, filter_threshold=1).action == "decode"
    assert plan_decode(batch, in_flight=2, depth=2, has_ready=False, filter_threshold=1).action == "wait"


def test_a_request_at_its_length_limit_is_never_sent_again() -> None:
    batch = views((0, 10, 10, True), (1, 2, 10, True))  # request 0's last token is in flight
    drain = plan_decode(batch, in_flight=1, depth=2, has_ready=False, filter_threshold=8)
    assert drain.action == "drain" and drain.remove == (0,) and drain.reason == "length_limit"
    now = plan_decode(batch, in_flight=0, depth=2, has_ready=False, filter_threshold=8)
    assert now.action == "filter" and now.remove == (0,)


def test_shards_that_order_calls_filter_behind_the_calls_in_flight() -> None:
    batch = views((0, 10, 10, True), (1, 2, 10, True), (2, 5, 10, False))
    queued = plan_decode(batch, in_flight=2, depth=2, has_ready=False, filter_threshold=1, ordered=True)
    assert queued.action == "filter" and queued.remove == (0, 2) and queued.reason == "length_limit"
    unordered = plan_decode(batch, in_flight=2, depth=2, has_ready=False, filter_threshold=1, ordered=False)
    assert unordered.action == "drain"
    # a request still in its prompt may be counting a chunk in flight as a token: only the answers tell
    prompt = views((0, 2, 2, True), (1, 2, 10, True))
    prompt = [replace(prompt[0], decoding=False), prompt[1]]
    unsure = plan_decode(prompt, in_flight=2, depth=2, has_ready=False, filter_threshold=1, ordered=True)
    assert unsure.action == "drain" and unsure.remove == (0,)


def test_finished_requests_wait_for_the_threshold() -> None:
    batch = views((0, 4, 10, False), (1, 4, 10, True), (2, 4, 10, True))
    assert plan_decode(batch, 0, 2, False, filter_threshold=2).action == "decode"
    decision = plan_decode(batch, 0, 2, False, filter_threshold=1)
    assert decision.action == "filter" and decision.remove == (0,) and decision.reason == "finished"


def test_all_finished_clears_even_below_threshold() -> None:
    batch = views((0, 4, 10, False), (1, 4, 10, False))
    decision = plan_decode(batch, 0, 2, False, filter_threshold=100)
    assert decision.action == "filter" and decision.remove == (0, 1) and decision.reason == "all_finished"


def test_idle_and_ready_batches() -> None:
    assert plan_decode([], 0, 2, has_ready=False, filter_threshold=1).action == "idle"
    assert plan_decode([], 1, 2, has_ready=False, filter_threshold=1).action == "drain"
    assert plan_decode([], 0, 2, has_ready=True, filter_threshold=1).action == "decode"
