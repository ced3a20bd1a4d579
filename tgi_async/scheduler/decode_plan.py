"""The async decode loop's next move, as a pure function of what the router knows between two shard calls.

The loop keeps up to `depth` calls queued at the shard, so it learns what a step did one step late, and it
reads the answers in the order it sent the calls. On the bundled shard that is the order they run in (it
starts numbered calls in order: proto/call_order.py). TGI's shards start calls as gRPC hands them over: a call
that waits alone behind the running one runs next, but two calls waiting together may start in either order.
These rules keep every shard safe:

1. Calls in flight commute. Any number of plain decodes of the batch; beside them at most one call that
   changes the batch (`join`: requests enter it; `filter`: requests leave it), never two; nothing behind the
   call that creates the batch; and one decode at most behind a filter. In whatever order the shard runs
   them, each request is computed in the steps the router counted, except that a join run after a decode
   gives its new requests one step fewer, and the requests a filter removes may be computed once more (by
   the decode behind it): the shard's state is right in any order.
2. On shards that do not order calls, a call goes behind others only once the oldest of them was sent
   `DISPATCH_GRACE_S` ago: it has started (a shard starts a call that reaches it idle within that time), or
   it waits behind one that has, and a call that arrives later queues behind it. So two calls never reach an
   idle shard together (TGI's shard may start those in either order), and the answers, read in the order sent,
   carry the tokens in the order computed. Measured: TGI's CPU shard started 0 of 1,600 calls sent 0-2,000
   µs behind a Decode before it, loaded or not (docs/benchmarks.md). Should a shard ever take longer than the
   grace to start an idle call, rule 1 still keeps its state right (only tokens could come out of order).
3. A request that ended (EOS, stop sequence, length, its client left) leaves the batch before the next step.
   Until the router knows it ended, it is stepped only while its KV allocation has room for the step even if
   every step in flight returned 1 + speculate tokens, keeping room for the step of rule 1 that a reordered
   filter lets through. Allocations carry `EXTRA_STEPS` steps beyond TGI's for these two: one step after an
   end not known yet, one reordered behind a filter. A request with no room waits for an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallKind = Literal["create", "join", "decode", "filter"]
Action = Literal["create", "join", "decode", "filter", "receive", "idle"]
FilterReason = Literal["finished", "all_finished"]

EXTRA_STEPS = 2  # steps of KV per request beyond TGI's allocation (rule 3)
DISPATCH_GRACE_S = 0.002  # rule 2: how long a step sent into an idle pipeline has to start
REORDER_STEPS = 1  # of which: a decode run before the filter queued ahead of it (rule 1)


@dataclass(frozen=True, slots=True)
class RowView:
    """A request of the decode batch as the plan sees it."""

    id: int
    done: bool  # it ended, or its client left: it must not be stepped again
    room: bool  # one more step cannot write past its KV slots, whatever the steps in flight return


@dataclass(frozen=True, slots=True)
class PipelineView:
    """The decode batch (as of the last call sent) and the calls in flight on it, in the order sent."""

    rows: tuple[RowView, ...]
    in_flight: tuple[CallKind, ...]
    decodes_behind_filter: int  # decodes sent after the filter in flight
    unconfirmed: bool  # the oldest call in flight may not have started yet (rule 2)
    joins_waiting: bool  # admitted prompts (chunking shards) or prefilled batches (padded ones) wait to join


@dataclass(frozen=True, slots=True)
class DecodePlan:
    action: Action  # create / join / decode / filter: send that call; receive: read the next answer (for
    # "unconfirmed": or wait out the grace);
    # idle: nothing to do until work arrives
    remove: tuple[int, ...] = ()  # filter, or receive before one: the requests that leave
    reason: FilterReason | Literal["no_room", "pipeline_full", "unconfirmed"] | None = None  # why


IDLE = DecodePlan("idle")


def plan_decode(view: PipelineView, depth: int) -> DecodePlan:
    """What the decode loop does next (see the module's rules)."""
    if not view.rows:
        if view.in_flight:
            return DecodePlan("receive")  # the batch is being cleared: a new one starts once that is answered
        return DecodePlan("create") if view.joins_waiting else IDLE
    ended = tuple(r.id for r in view.rows if r.done)
    if ended:
        reason: FilterReason = "all_finished" if len(ended) == len(view.rows) else "finished"
        action: Action = "filter" if may_send(view, "filter", depth) else "receive"
        return DecodePlan(action, ended, reason)
    if not all(r.room for r in view.rows):
        return DecodePlan("receive", reason="no_room")  # only the answers tell how far it got
    if view.unconfirmed:
        return DecodePlan("receive", reason="unconfirmed")  # rule 2: its answer, or the grace, first
    if view.joins_waiting and may_send(view, "join", depth):
        return DecodePlan("join")
    if may_send(view, "decode", depth):
        return DecodePlan("decode")
    return DecodePlan("receive", reason="pipeline_full")


def may_send(view: PipelineView, kind: CallKind, depth: int) -> bool:
    """Rule 1: whether a call of `kind` commutes with every call in flight (and the pipeline has room)."""
    in_flight = view.in_flight
    if len(in_flight) >= depth or "create" in in_flight:
        return False
    if kind == "decode":
        return "filter" not in in_flight or view.decodes_behind_filter < REORDER_STEPS
    return all(k == "decode" for k in in_flight)


def has_room(
    prompt_tokens: int, tokens: int, steps_in_flight: int, capacity: int | None, speculate: int
) -> bool:
    """Rule 2 for one request: after its `steps_in_flight` (each returning up to 1 + speculate tokens), the
    next step and the reordered one still write inside its `capacity` KV slots (None: padded, no slots).

    A decode step at `g` tokens writes positions prompt + g - 1 ... prompt + g - 1 + speculate. A request
    still in its prompt (`tokens` 0) may finish it in the first step in flight and decode in the others.
    """
    if capacity is None:
        return True
    per_step = 1 + speculate
    if tokens == 0:
        if steps_in_flight == 0:
            return True  # the next step computes prompt (inside its slots) and yields the first token at most
        most = 1 + (steps_in_flight - 1) * per_step
    else:
        most = tokens + steps_in_flight * per_step
    return prompt_tokens + most + speculate + REORDER_STEPS * per_step <= capacity
