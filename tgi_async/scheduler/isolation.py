"""After a Prefill failed because of what one of its requests holds: which requests to prefill again.

TGI's router fails every request of a failed Prefill. Here a failure the shard blames on the batch's content
(a request its `from_pb` cannot build: a grammar that does not compile, tokenizers not aligned, a parameter
the shard refuses) is bisected: the batch's requests are prefilled again in two halves, each in a batch of
its own, then the failing half in halves again, until the request that fails is alone; it gets the shard's
error and everyone else goes on. One culprit among n costs at most 2 * ceil(log2 n) extra Prefills.

Pure: request ids in, a plan out; the step runner and the async decode loop execute it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# NOTE: a guard, never reached by halving (16 levels isolate one request among 65,536): a group that still
# fails at this depth fails whole.
MAX_LEVEL = 16


@dataclass(frozen=True, slots=True)
class IsolationPlan:
    """What to do with the live requests of a Prefill that failed for a reason in its requests."""

    retry: tuple[tuple[int, ...], ...]  # groups to prefill again, each in a new batch, in this order
    fail: tuple[int, ...]  # requests that get the shard's error: the one found to fail alone
    level: int  # bisection depth of the retries (1: the halves of the batch that first failed)


def plan_isolation(request_ids: Sequence[int], level: int = 0) -> IsolationPlan:
    """`request_ids` (in batch order, live ones only) failed a Prefill at bisection depth `level` (0: the
    batch as admitted): retry them in halves, or fail the one request left (or a group past `MAX_LEVEL`)."""
    ids = tuple(request_ids)
    if len(ids) <= 1 or level >= MAX_LEVEL:
        return IsolationPlan((), ids, level)
    middle = (len(ids) + 1) // 2
    return IsolationPlan((ids[:middle], ids[middle:]), (), level + 1)


def max_retries(batch_size: int) -> int:
    """The most Prefills bisection sends again for one failing request in a batch of `batch_size`."""
    return 2 * max(batch_size - 1, 0).bit_length()
