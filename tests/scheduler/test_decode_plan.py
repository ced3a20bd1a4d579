"""plan_decode and has_room: the async decode loop's pipelining rules, as plain data."""

from __future__ import annotations

from tgi_async.scheduler.decode_plan import (
    EXTRA_STEPS,
    CallKind,
    PipelineView,
    RowView,
    has_room,
    plan_decode,
)


def view(
    *rows: tuple[int, bool, bool],
    in_flight: tuple[CallKind, ...] = (),
    behind: int = 0,
    joins: bool = False,
    unconfirmed: bool = False,
) -> PipelineView:
    return PipelineView(tuple(RowView(*r) for r in rows), in_flight, behind, unconfirmed, joins)


LIVE = (0, False, True), (1, False, True)


def test_keeps_the_pipeline_full_until_depth() -> None:
    assert plan_decode(view(*LIVE), depth=2).action == "decode"
    assert plan_decode(view(*LIVE, in_flight=("decode",)), depth=2).action == "decode"
    full = plan_decode(view(*LIVE, in_flight=("decode", "decode")), depth=2)
    assert full.action == "receive" and full.reason == "pipeline_full"


def test_an_ended_request_leaves_before_any_further_step() -> None:
    ended = ((0, True, True), (1, False, True))
    behind_decodes = plan_decode(view(*ended, in_flight=("decode",)), depth=2)
    assert behind_decodes.action == "filter" and behind_decodes.remove == (0,)
    assert behind_decodes.reason == "finished"
    # a join in flight does not commute with a filter: read answers until it is back, never decode meanwhile
    waiting = plan_decode(view(*ended, in_flight=("join",)), depth=2)
    assert waiting.action == "receive" and waiting.remove == (0,)
    everyone = plan_decode(view((0, True, True), (1, True, False)), depth=2)
    assert everyone.action == "filter" and everyone.reason == "all_finished" and everyone.remove == (0, 1)


def test_one_decode_at_most_behind_a_filter() -> None:
    assert plan_decode(view(*LIVE, in_flight=("filter",)), depth=3).action == "decode"
    behind = plan_decode(view(*LIVE, in_flight=("filter", "decode"), behind=1), depth=3)
    assert behind.action == "receive"
    # a decode sent before the filter does not count
    assert plan_decode(view(*LIVE, in_flight=("decode", "filter"), behind=0), depth=3).action == "decode"


def test_calls_that_change_the_batch_never_share_the_pipeline() -> None:
    joins = view(*LIVE, in_flight=("decode",), joins=True)
    assert plan_decode(joins, depth=2).action == "join"
    second = plan_decode(view(*LIVE, in_flight=("join",), joins=True), depth=2)
    assert second.action == "decode"  # not another join
    behind_filter = plan_decode(view(*LIVE, in_flight=("filter",), joins=True), depth=2)
    assert behind_filter.action == "decode"


def test_nothing_queues_behind_the_call_that_creates_the_batch() -> None:
    created = plan_decode(view(*LIVE, in_flight=("create",)), depth=2)
    assert created.action == "receive"
    assert plan_decode(view((0, True, True), in_flight=("create",)), depth=2).action == "receive"


def test_a_second_step_waits_until_the_first_is_confirmed() -> None:
    """Rule 2: on shards that do not order calls, a step sent into an idle pipeline gets its grace (or its
    answer) before another step goes behind it; a filter may go at once (it commutes, carries no tokens)."""
    waiting = plan_decode(view(*LIVE, in_flight=("decode",), unconfirmed=True), depth=2)
    assert waiting.action == "receive" and waiting.reason == "unconfirmed"
    ended = plan_decode(
        view((0, True, True), (1, False, True), in_flight=("decode",), unconfirmed=True), depth=2
    )
    assert ended.action == "filter"
    assert plan_decode(view(*LIVE, in_flight=("decode",)), depth=2).action == "decode"


def test_a_request_without_room_waits_for_an_answer() -> None:
    tight = plan_decode(view((0, False, False), (1, False, True), in_flight=("decode",)), depth=2)
    assert tight.action == "receive" and tight.reason == "no_room"


def test_empty_batch() -> None:
    assert plan_decode(view(), depth=2).action == "idle"
    assert plan_decode(view(joins=True), depth=2).action == "create"
    assert plan_decode(view(in_flight=("filter",), joins=True), depth=2).action == "receive"


def tgi_slots(prompt: int, max_new: int, speculate: int = 0) -> int:
    """TGI's allocation (prompt + max_new + speculate - 1) with the async policy's extra steps."""
    return prompt + max_new + speculate - 1 + EXTRA_STEPS * (1 + speculate)


def test_room_lets_a_request_run_to_its_limit_and_one_unseen_step_past_it() -> None:
    prompt, max_new = 10, 4
    slots = tgi_slots(prompt, max_new)
    # decoding with 2 tokens and 2 steps in flight: it may have 4 = max_new; one more step still fits, with
    # the step a reordered filter may let through
    assert has_room(prompt, 2, 2, slots, 0)
    assert not has_room(prompt, 3, 2, slots, 0)
    assert not has_room(prompt, 5, 0, slots, 0)  # past its limit: finished rows are filtered, not stepped
    # still in its prompt: the next step computes prompt only (or yields token 1)
    assert has_room(prompt, 0, 0, prompt, 0)
    assert has_room(prompt, 0, 1, slots, 0)
    assert has_room(prompt, 0, 0, None, 3)  # padded shards: no slots to overflow


def test_room_counts_every_speculated_token() -> None:
    prompt, max_new, speculate = 10, 8, 2
    slots = tgi_slots(prompt, max_new, speculate)
    assert has_room(prompt, 5, 0, slots, speculate)
    assert has_room(prompt, 2, 2, slots, speculate)  # worst case 8 tokens
    assert has_room(prompt, 4, 2, slots, speculate)  # worst case 10: the step after an unseen end still fits
    assert not has_room(prompt, 5, 2, slots, speculate)  # worst case 11
