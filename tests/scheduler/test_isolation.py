"""A request that slips through validation yet fails the shard's Prefill fails alone (issue 16): the failed
batch's requests are prefilled again in halves until the culprit is alone. The bisection planner as a pure
function; then both schedulers on the strict shard (in process), whose `refuse_prompts` fails a Prefill as
TGI's shard does on a request its from_pb cannot build, before it takes any cached batch."""

from __future__ import annotations

import asyncio

import pytest

from tests.scheduler.strict_client import conserved, outcome, settle, start_scheduler, strict
from tgi_async import metrics
from tgi_async.scheduler.isolation import MAX_LEVEL, max_retries, plan_isolation
from tgi_async.scheduler.request import (
    GenerateRequest,
    SamplingParameters,
    StoppingParameters,
)

POLICIES = ("async", "sync")
KINDS = ("flashinfer", "paged", "padded")  # chunking joins / Decode merges on flash / padded batches
POISON = "poison"


# -- the planner ---------------------------------------------------------------------------------------------
def test_a_failed_batch_is_retried_in_halves_in_order() -> None:
    plan = plan_isolation([7, 3, 9, 4, 5])
    assert plan.retry == ((7, 3, 9), (4, 5))
    assert plan.fail == ()
    assert plan.level == 1
    assert plan_isolation([4, 5], level=3).retry == ((4,), (5,))


def test_a_request_that_fails_alone_is_the_culprit() -> None:
    plan = plan_isolation([4], level=2)
    assert plan.retry == ()
    assert plan.fail == (4,)
    assert plan_isolation([]).fail == ()


def test_past_the_depth_guard_a_group_fails_whole() -> None:
    assert plan_isolation([1, 2, 3], level=MAX_LEVEL).fail == (1, 2, 3)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64, 100])
def test_bisection_finds_every_culprit_within_log2_levels(size: int) -> None:
    """Run the planner as the schedulers do against a shard refusing one request: the culprit alone fails,
    every other request prefills once, in at most 2 * ceil(log2 n) extra Prefills."""
    for culprit in range(size):
        prefilled: list[int] = []
        failed: list[int] = []
        retries = 0
        pending = [(tuple(range(size)), 0)]
        while pending:
            group, level = pending.pop(0)
            if culprit not in group:
                prefilled.extend(group)
                continue
            plan = plan_isolation(group, level)
            failed.extend(plan.fail)
            retries += len(plan.retry)
            pending = [(g, plan.level) for g in plan.retry] + pending
        assert failed == [culprit]
        assert sorted(prefilled) == [i for i in range(size) if i != culprit]
        assert retries <= max_retries(size)
    assert max_retries(5) == 6 and max_retries(1) == 0


# -- both schedulers on the strict shard ---------------------------------------------------------------------
def request(name: str, prompt: int, max_new: int) -> GenerateRequest:
    return GenerateRequest(
        inputs=f"{name}:{prompt}",
        input_length=prompt,
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=max_new),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("position", [0, 2, 4])
async def test_a_poison_request_in_a_prefill_fails_alone(policy: str, kind: str, position: int) -> None:
    """One refused request among 4 live ones, all in one Prefill: the 4 get their whole output, the poison
    the shard's message; every KV block comes back and the shard holds no batch after."""
    shard = strict(kind)
    shard.shard.refuse_prompts = (POISON,)
    live = [request(f"live{i}", 8, 12) for i in range(4)]
    requests = [*live]
    requests.insert(position, request(POISON, 8, 12))
    before = metrics.PREFILL_ISOLATION_RETRIES.value()
    scheduler = await start_scheduler(shard, policy)
    try:
        # NOTE: the five reach the queue in one turn of the loop: the next admission takes them together
        results = await asyncio.wait_for(asyncio.gather(*(outcome(scheduler, r) for r in requests)), 30)
        await settle(scheduler)
    finally:
        await scheduler.stop()
    poisoned = results.pop(position)
    assert results == [(list(range(1, 13)), "end")] * 4
    assert poisoned[0] == []
    assert poisoned[1].startswith("Server error: request ") and "cannot be built" in poisoned[1], poisoned
    assert 2 <= metrics.PREFILL_ISOLATION_RETRIES.value() - before <= max_retries(5)
    assert shard.violations == []
    conserved(scheduler, shard)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", POLICIES)
async def test_a_poison_request_joining_a_running_batch_leaves_it_streaming(policy: str, kind: str) -> None:
    """The poison arrives with 4 others while a request streams: on chunking shards they join its batch in
    one Prefill(new, cached), which fails before the shard takes the cached batch; the running request
    streams on to its last token, the 4 complete, the poison fails."""
    shard = strict(kind, step_ms=2.0)
    shard.shard.refuse_prompts = (POISON,)
    scheduler = await start_scheduler(shard, policy)
    try:
        running = asyncio.ensure_future(outcome(scheduler, request("running", 16, 60)))
        for _ in range(200):  # until it streams
            await asyncio.sleep(0.005)
            if scheduler.state.running and next(iter(scheduler.state.running.values())).generated_ids:
                break
        joining = [request(f"join{i}", 8, 10) for i in range(4)] + [request(POISON, 8, 10)]
        results = await asyncio.wait_for(asyncio.gather(*(outcome(scheduler, r) for r in joining)), 30)
        streamed = await asyncio.wait_for(running, 30)
        await settle(scheduler)
    finally:
        await scheduler.stop()
    assert streamed == (list(range(1, 61)), "end")
    assert results[:4] == [(list(range(1, 11)), "end")] * 4
    assert results[4][0] == [] and "cannot be built" in results[4][1]
    assert shard.violations == []
    conserved(scheduler, shard)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fault", range(2, 12))
async def test_a_failure_that_loses_the_running_batch_fails_its_requests_and_nothing_hangs(
    policy: str, fault: int
) -> None:
    """An injected step failure (the shard pops the batches the call names, then raises: a failure after
    from_pb) among the calls around a poison joining a running stream: the poison never ends well, everything
    ends (whole, or failed by a call that touched it), the shard keeps no batch and every block comes back."""
    shard = strict("flashinfer", step_ms=1.0, fault=(fault, "fail"))
    shard.shard.refuse_prompts = (POISON,)
    scheduler = await start_scheduler(shard, policy)
    try:
        running = asyncio.ensure_future(outcome(scheduler, request("running", 16, 30)))
        await asyncio.sleep(0.01)
        joining = [request(f"join{i}", 8, 10) for i in range(4)] + [request(POISON, 8, 10)]
        results = await asyncio.wait_for(asyncio.gather(*(outcome(scheduler, r) for r in joining)), 30)
        streamed = await asyncio.wait_for(running, 30)
        await settle(scheduler)
    finally:
        await scheduler.stop()
    assert results.pop()[1].startswith("Server error: ")  # its own refusal, or a failure that touched it
    for (positions, how), count in [*((r, 10) for r in results), (streamed, 30)]:
        assert (how == "end" and positions == list(range(1, count + 1))) or how.startswith("Server error: ")
    assert shard.violations == []
    conserved(scheduler, shard)
