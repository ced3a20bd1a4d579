"""Both schedulers' real loops against the strict TGI-semantics shard (in process), under hypothesis: random
arrivals, prompt and output lengths, EOS, client disconnects, speculation, calls started in adversarial
order, injected failures, batches up to 256, on every shard kind TGI has (flashinfer: block 1 + chunking;
paged: block 16, no chunking; flashdecoding: block 256 + chunking; padded CausalLM), and with the bundled
shard's way of never computing or naming a stopped request again (`skip_stopped`).

Every example checks: no request lost, hung or duplicated (tokens 1..n in order, n as the shard's stream
says); an error only where a fault was injected, and then an error, never silence; no KV write outside an
allocation (the shard's ledger); every block back; no batch left at the shard.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scheduler.strict_client import (
    KINDS,
    PREFILL_TOKENS,
    assert_blocks_back,
    length_tokenizer,
    settle,
    start_scheduler,
    strict,
)
from tgi_async.scheduler.request import (
    EndEvent,
    GenerateRequest,
    InferError,
    SamplingParameters,
    StoppingParameters,
)
from tgi_async.strict_shard import tokens
from tgi_async.strict_shard.executor import FaultKind


@dataclass(frozen=True)
class Spec:
    prompt_len: int
    max_new: int
    leave_after: int | None  # the client disconnects after this many events
    arrival: int  # event-loop turns before it is sent
    family: int = 0  # prompts of a family share their tokens, up to the shorter one (prefix caching)

    def text(self, index: int) -> str:
        return f"f{self.family}/r{index}:{self.prompt_len}"


@dataclass(frozen=True)
class Case:
    policy: str
    kind: str
    speculate: int
    eos_rate: float
    reorder_seed: int | None
    fault: tuple[int, FaultKind] | None
    skip_stopped: bool = False  # the bundled shard's way: a stopped request is computed and named no more


def request(index: int, spec: Spec) -> GenerateRequest:
    text = spec.text(index)
    return GenerateRequest(
        inputs=text,
        input_length=spec.prompt_len,
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=spec.max_new),
        input_ids=tuple(length_tokenizer(text, 0, True)),  # the router's ids: prefix caching matches them
    )


def expected_tokens(index: int, spec: Spec, seed: int, eos_rate: float) -> int:
    key = tokens.prompt_key(spec.text(index))
    for g in range(1, spec.max_new + 1):
        if tokens.is_eos(key, g, seed, eos_rate):
            return g
    return spec.max_new


async def client(scheduler, index: int, spec: Spec) -> tuple[list[int], str]:
    """(token positions received, how it ended: "end" | "left" | "error")."""
    for _ in range(spec.arrival):
        await asyncio.sleep(0)
    positions: list[int] = []
    stream = scheduler.generate(request(index, spec))
    try:
        async for event in stream:
            if spec.leave_after is not None and len(positions) >= spec.leave_after:
                return positions, "left"
            token = event.token
            positions.append(token.id - tokens.TOKEN_ID_BASE if not token.special else len(positions) + 1)
            if isinstance(event, EndEvent):
                assert event.generated_text.generated_tokens == len(positions)
                return positions, "end"
    except InferError:
        return positions, "error"
    finally:
        await stream.aclose()
    raise AssertionError("stream ended without an EndEvent")


async def run(case: Case, specs: list[Spec]) -> None:
    chunking = KINDS[case.kind][1] != 16 and case.speculate == 0 and case.kind != "padded"
    if not chunking:  # like TGI's router: prompts must fit one prefill when the shard cannot chunk
        specs = [replace(s, prompt_len=min(s.prompt_len, PREFILL_TOKENS)) for s in specs]
    hangs = case.fault is not None and case.fault[1] == "hang"
    shard = strict(
        case.kind,
        case.speculate,
        case.eos_rate,
        case.reorder_seed,
        case.fault,
        timeout=0.2 if hangs else None,
        skip_stopped=case.skip_stopped,
    )
    scheduler = await start_scheduler(shard, case.policy)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(client(scheduler, i, s) for i, s in enumerate(specs))), timeout=60
        )
        await settle(scheduler, None if hangs or case.fault else lambda: shard.shard.cache)
    finally:
        await scheduler.stop()
    assert shard.violations == []
    seed, failed = shard.shard.seed, 0
    for index, (spec, (positions, how)) in enumerate(zip(specs, results, strict=True)):
        expected = expected_tokens(index, spec, seed, case.eos_rate)
        assert positions == list(range(1, len(positions) + 1)), (index, positions)  # in order, no duplicate
        if how == "end":
            assert len(positions) == expected, (index, positions, expected)
        elif how == "left":
            assert spec.leave_after is not None and len(positions) <= expected
        else:
            failed += 1
    assert failed == 0 or case.fault is not None
    assert scheduler.state.running == {} and not scheduler.state.waiting
    assert_blocks_back(scheduler)
    if not shard.executor.dead and not hangs:
        assert shard.shard.cache == {}, "batches left at the shard"


specs = st.lists(
    st.builds(
        Spec,
        prompt_len=st.integers(1, 600),
        max_new=st.integers(1, 40),
        leave_after=st.none() | st.integers(0, 8),
        arrival=st.integers(0, 30),
        family=st.integers(0, 3),
    ),
    min_size=1,
    max_size=48,
)
cases = st.builds(
    Case,
    policy=st.sampled_from(["async", "sync"]),
    kind=st.sampled_from(list(KINDS)),
    speculate=st.sampled_from([0, 0, 1, 3]),
    eos_rate=st.sampled_from([0.0, 0.05, 0.3]),
    reorder_seed=st.none() | st.integers(0, 1 << 16),
    fault=st.none() | st.tuples(st.integers(1, 30), st.sampled_from(["fail", "crash", "hang"])),
    skip_stopped=st.booleans(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases, requests=specs)
def test_no_request_lost_hung_duplicated_or_overflowing(case: Case, requests: list[Spec]) -> None:
    asyncio.run(run(case, requests))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cases.filter(lambda c: c.fault is None),
    prompt_len=st.integers(1, 200),
    max_new=st.integers(16, 64),
)
def test_batches_of_256(case: Case, prompt_len: int, max_new: int) -> None:
    requests = [Spec(prompt_len + i % 7, max_new + i % 5, None, i % 3) for i in range(256)]
    asyncio.run(run(case, requests))
