"""The async decode loop's decisions, as a pure function of what it knows between two shard calls.

The loop keeps up to `depth` Decode calls queued at the shard, so it learns of a finish one step late. Two
rules keep that safe: a request whose projected token count (received + in flight) reached max_new_tokens
is never sent again (its next step would write past its KV slots), and a FilterBatch is sent only once no call
is in flight (the shard would otherwise apply it between calls in an order nobody chose). Shards that start
calls in the order they were sent (`ordered`) are the exception: there the FilterBatch queues behind the calls
in flight, and the next Decode behind it, so the pipeline never drains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["decode", "wait", "drain", "filter", "idle"]
FilterReason = Literal["length_limit", "finished", "all_finished"]


@dataclass(frozen=True, slots=True)
class RequestView:
    """A request of the decode batch, as the policy sees it."""

    id: int
    tokens_projected: int  # tokens received + steps in flight that include it
    max_new_tokens: int
    live: bool  # neither ended nor abandoned by its client
    # It has a token: each step in flight brings exactly one more. Before that, a step in flight may be a
    # prompt chunk that brings none, so the projection may overcount and only the answers tell.
    decoding: bool = True


@dataclass(frozen=True, slots=True)
class DecodeDecision:
    action: Action  # decode: send the next step; wait: pipeline full; drain: await calls in flight before
    # filtering; filter: FilterBatch now (ClearCache if `remove` is everything); idle: nothing to do
    remove: tuple[int, ...] = ()  # requests to take out of the batch (drain / filter)
    reason: FilterReason | None = None


def plan_decode(
    batch: Sequence[RequestView],
    in_flight: int,
    depth: int,
    has_ready: bool,
    filter_threshold: int,
    ordered: bool = False,
    filters_in_flight: int = 0,
) -> DecodeDecision:
    """What the decode loop does next.

    `batch`: requests in the decode batch at the shard; `in_flight`: Decode calls sent and not answered;
    `has_ready`: prefilled batches wait to join; `filter_threshold`: how many finished or abandoned requests
    justify a filter (they cost compute and hold KV blocks, but are harmless); `ordered`: the shard starts
    calls in the order sent, so a filter may queue behind the calls in flight instead of draining them;
    `filters_in_flight`: such queued filters (they do not count towards `depth`, but must be awaited).
    """
    if not batch and not has_ready:
        return DecodeDecision("drain" if in_flight or filters_in_flight else "idle")
    at_limit = tuple(v.id for v in batch if v.tokens_projected >= v.max_new_tokens)
    finished = tuple(v.id for v in batch if not v.live)
    remove = tuple(dict.fromkeys(at_limit + finished))
    if at_limit:
        reason: FilterReason = "length_limit"
    elif batch and len(finished) == len(batch):
        reason = "all_finished"
    elif len(finished) >= filter_threshold:
        reason = "finished"
    else:
        return DecodeDecision("wait" if in_flight >= depth else "decode")
    # NOTE: a projection that may overcount (a prompt chunk in flight) must not take a request out early.
    unsure = at_limit and any(not v.decoding for v in batch if v.id in at_limit)
    queue_behind = ordered and not unsure
    return DecodeDecision("drain" if in_flight and not queue_behind else "filter", remove, reason)
