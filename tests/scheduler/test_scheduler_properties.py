"""Property tests of both schedulers' loops against a simulated shard: random arrivals, prompt lengths,
max_new_tokens, EOS finishes and client disconnects. No request is lost or duplicated, no token follows an
end, no KV allocation overflows, and every block comes back."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scheduler.simulated_shard import SimulatedShard
from tgi_async import metrics
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.factory import create_scheduler
from tgi_async.scheduler.request import (
    EndEvent,
    GenerateRequest,
    SamplingParameters,
    StoppingParameters,
    TokenEvent,
)


@dataclass(frozen=True)
class Spec:
    prompt_len: int
    max_new: int
    eos_at: int | None
    leave_after: int | None  # the client disconnects after this many events
    arrival: int  # event-loop turns to wait before sending


specs = st.lists(
    st.builds(
        Spec,
        prompt_len=st.integers(1, 300),
        max_new=st.integers(1, 24),
        eos_at=st.none() | st.integers(1, 24),
        leave_after=st.none() | st.integers(0, 6),
        arrival=st.integers(0, 40),
    ),
    min_size=1,
    max_size=24,
)


async def client(scheduler, index: int, spec: Spec) -> tuple[list[int], EndEvent | None]:
    for _ in range(spec.arrival):
        await asyncio.sleep(0)
    request = GenerateRequest(
        inputs=f"p{index}",
        input_length=spec.prompt_len,
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=spec.max_new),
    )
    tokens: list[int] = []
    stream = scheduler.generate(request)
    try:
        async for event in stream:
            if spec.leave_after is not None and len(tokens) >= spec.leave_after:
                return tokens, None
            assert isinstance(event, TokenEvent | EndEvent)
            tokens.append(event.token.id)
            if isinstance(event, EndEvent):
                return tokens, event
    finally:
        await stream.aclose()
    raise AssertionError("stream ended without EndEvent")


async def run(policy: str, shard_kind: str, requests: list[Spec], jitter_seed: int | None = None) -> None:
    chunking, padded = shard_kind == "chunking", shard_kind == "padded"
    if not chunking:  # like TGI's router, prompts must fit one prefill when the shard cannot chunk
        requests = [replace(s, prompt_len=min(s.prompt_len, 128)) for s in requests]
    shard = SimulatedShard(
        eos_of={f"p{i}": s.eos_at for i, s in enumerate(requests)},
        chunking=chunking,
        padded=padded,
        total_tokens=16 * 64,
        dispatch_jitter=None if jitter_seed is None else random.Random(jitter_seed),
    )
    config = SchedulerConfig(
        policy=policy, max_batch_prefill_tokens=128, max_batch_total_tokens=16 * 64, prefill_step_tokens=48
    )
    await shard.warmup(None, 48 if policy == "async" and chunking else 128, None, None)
    scheduler = create_scheduler(shard, await shard.info(), config)
    scheduler.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(client(scheduler, i, s) for i, s in enumerate(requests))), timeout=30
        )
        for _ in range(200):  # abandoned requests leave at the loops' next step
            if not scheduler.state.running and not scheduler.state.waiting:
                break
            await asyncio.sleep(0.001)
    finally:
        await scheduler.stop()
    assert shard.overflows == []
    for spec, (tokens, end) in zip(requests, results, strict=True):
        expected = min(spec.max_new, spec.eos_at or spec.max_new)
        if end is not None:
            assert tokens == list(range(1, expected + 1))  # no token lost, duplicated, or after the end
            assert end.generated_text.generated_tokens == expected
        else:
            assert spec.leave_after is not None and len(tokens) <= expected
    assert scheduler.state.running == {}
    assert not scheduler.state.waiting
    allocator = scheduler.state.allocator
    if padded:
        assert allocator is None
    else:
        assert allocator is not None and allocator.free_blocks == allocator.total_blocks - 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=specs,
    policy=st.sampled_from(["sync", "async"]),
    shard_kind=st.sampled_from(["chunking", "blocks", "padded"]),
    jitter_seed=st.none() | st.integers(0, 1 << 16),  # a shard that does not order calls (TGI's)
)
def test_no_request_lost_duplicated_or_overflowing(
    requests: list[Spec], policy: str, shard_kind: str, jitter_seed: int | None
):
    asyncio.run(run(policy, shard_kind, requests, jitter_seed))


def vanished_calls() -> int:
    rendered = metrics.VANISHED_BATCH_CALLS.render().strip().splitlines()
    return int(rendered[-1].rsplit(" ", 1)[1]) if rendered and not rendered[-1].startswith("#") else 0


def test_a_filter_queued_behind_the_step_that_ends_its_batch_meets_no_batch():
    """Two requests reach their length limit at step 3 while a third is expected to go on; the filter keeping
    the third queues behind that step, but the third ends there too (EOS): the shard drops the batch, the
    filter meets no batch, and that is expected: every request ends normally, every block comes back."""
    requests = [Spec(4, 3, None, None, 0), Spec(4, 3, None, None, 0), Spec(4, 10, 3, None, 0)]
    before = vanished_calls()
    asyncio.run(run("async", "blocks", requests))
    assert vanished_calls() > before
