"""The strict shard in this process, behind `ShardedClient`'s interface: the same semantics and executor as
`tgi-async shard serve --simulate`, the same protobuf conversions as the gRPC client, no sockets, so the real
scheduler loops run thousands of steps per second under hypothesis. Process-level behaviour (gRPC, deadlines
on a real socket, a dying process) is tested against the real process in integration_tests/.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from tgi_async.client import convert
from tgi_async.client.shard_client import ShardError, warmup_request
from tgi_async.client.types import CachedBatch, NewBatch, ShardInfo, StepResult, WarmupResult
from tgi_async.proto import pb
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.core import SchedulerCore
from tgi_async.scheduler.factory import create_scheduler
from tgi_async.scheduler.request import EndEvent, GenerateRequest, InferError
from tgi_async.strict_shard import tokens
from tgi_async.strict_shard.executor import FaultKind, SerialExecutor
from tgi_async.strict_shard.kv import KvViolation
from tgi_async.strict_shard.profile import load_profile
from tgi_async.strict_shard.shard import StrictShard

T = TypeVar("T")

KINDS = {  # shard kind -> (profile kind, block size)
    "flashinfer": ("flash", 1),
    "paged": ("flash", 16),
    "flashdecoding": ("flash", 256),
    "padded": ("padded", 16),
}
PREFILL_TOKENS = 256  # --max-batch-prefill-tokens (Warmup's max_prefill_tokens)
KV_TOKENS = 6000  # about what the test profile's memory holds


def strict(
    kind: str,
    speculate: int = 0,
    eos_rate: float = 0.0,
    reorder_seed: int | None = None,
    fault: tuple[int, FaultKind] | None = None,
    timeout: float | None = None,
    accept_rate: float = 0.7,
    step_ms: float = 0.0,
    start_delay_s: float = 0.0,
    skip_stopped: bool = False,
) -> InProcessShard:
    """A strict shard of `kind` (KINDS) in this process, warmed up by the caller."""
    profile_kind, block_size = KINDS[kind]
    profile = replace(
        load_profile("test"),
        kind=profile_kind,
        block_size=block_size,
        speculate=speculate if profile_kind == "flash" else 0,
        accept_rate=accept_rate,
        forward_floor_ms=step_ms,
        kv_bytes_per_token=int(load_profile("test").free_kv_bytes(PREFILL_TOKENS) // KV_TOKENS),
    )
    shard = StrictShard(
        profile, length_tokenizer, eos_token_id=2, seed=7, eos_rate=eos_rate, skip_stopped=skip_stopped
    )
    executor = SerialExecutor(
        time_scale=1.0 if step_ms else 0.0,
        start_delay_s=start_delay_s,
        reorder=None if reorder_seed is None else random.Random(reorder_seed),
        faults=dict([fault]) if fault else {},
    )
    return InProcessShard(shard, executor, call_timeout=timeout)


async def start_scheduler(shard: InProcessShard, policy: str, **config: Any) -> SchedulerCore:
    """Warm `shard` up as the router does (TGI's max_prefill_tokens) and start a scheduler on it."""
    settings = SchedulerConfig(
        policy=policy,  # type: ignore[arg-type]
        max_batch_prefill_tokens=PREFILL_TOKENS,
        max_batch_total_tokens=KV_TOKENS,
        prefill_step_tokens=64,
    )
    settings = replace(settings, **config)
    warmup = await shard.warmup(None, settings.max_batch_prefill_tokens, None, None)
    if warmup.max_supported_total_tokens is not None:
        settings = replace(settings, max_batch_total_tokens=warmup.max_supported_total_tokens)
    scheduler = create_scheduler(shard, await shard.info(), settings)  # type: ignore[arg-type]
    scheduler.start()
    return scheduler


def assert_blocks_back(scheduler: SchedulerCore) -> None:
    """Every KV block is free, or cached for a prefix nobody reads (prefix caching)."""
    allocator = scheduler.state.allocator
    if allocator is not None:
        cached = getattr(allocator, "cached_blocks", 0)
        assert allocator.free_blocks + cached == allocator.total_blocks - 1


async def settle(scheduler: SchedulerCore, shard_cache: Callable[[], Mapping] | None = None) -> None:
    """Give abandoned requests the loops' next steps to leave (and failed calls their deadlines); given the
    shard's cache, also the FilterBatch or ClearCache that a step still sends for requests that just ended
    (the state empties first: a batch never cleared still fails the caller's check, 2 s later)."""
    for _ in range(2000):
        idle = not scheduler.state.running and not scheduler.state.waiting
        if idle and not (shard_cache is not None and shard_cache()):
            return
        await asyncio.sleep(0.001)


def length_tokenizer(text: str, truncate: int, add_special_tokens: bool) -> list[int]:
    """Tests name their prompts `name:LENGTH`: LENGTH distinct ids (what the router side is told too); prompts
    named `family/member:LENGTH` share their ids with their family (a common prefix). Any other text
    (Warmup's) is one token per word."""
    name, _, length = text.rpartition(":")
    if not length.isdigit():
        name, length = text, str(len(text.split()))
    base = sum(name.partition("/")[0].encode()) * 1000
    ids = [base + i for i in range(int(length))]
    return ids[-truncate:] if truncate else ids


class InProcessShard:
    def __init__(self, shard: StrictShard, executor: SerialExecutor, call_timeout: float | None = None):
        self.shard = shard
        self.executor = executor
        self.call_timeout = call_timeout
        self.violations: list[str] = []  # KV written outside an allocation, and other RuntimeErrors
        executor.die = lambda code: None
        executor.exit_delay_s = 0.0
        executor.shutdown = self._shutdown

    def _shutdown(self) -> None:
        self.executor.dead = True

    def _start(self, method: str, run: Callable[[], Any], request: Any, convert_answer, deadline=True):
        async def call() -> Any:
            answer = asyncio.ensure_future(self.executor.call(method, run, lambda: self.shard.lose(request)))
            try:
                timeout = self.call_timeout if deadline else None
                result = await asyncio.wait_for(asyncio.shield(answer), timeout)
            except asyncio.TimeoutError:
                raise ShardError(method, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            except ConnectionError as exc:
                raise ShardError(method, grpc.StatusCode.UNAVAILABLE, str(exc)) from None
            except Exception as exc:
                if isinstance(exc, KvViolation) or (
                    isinstance(exc, RuntimeError) and "injected" not in str(exc)
                ):
                    self.violations.append(f"{method}: {exc}")
                text = str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)
                raise ShardError(method, grpc.StatusCode.INTERNAL, text) from None
            return convert_answer(result)

        return asyncio.ensure_future(call())  # queued now, in call order, as the gRPC client's RPCs

    # -- ShardedClient's interface ---------------------------------------------------------------------------
    async def info(self) -> ShardInfo:
        return convert.shard_info_from_pb(await self._start("Info", self.shard.info, None, _same, False))

    async def health(self, timeout: float | None = None) -> None:
        call = self._start("Health", pb.HealthResponse, None, _same, False)
        try:
            await asyncio.wait_for(asyncio.shield(call), timeout)
        except asyncio.TimeoutError:
            raise ShardError("Health", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    async def warmup(self, max_input, max_prefill, max_total, max_batch_size) -> WarmupResult:
        request = warmup_request(max_input, max_prefill, max_total, max_batch_size)
        run = lambda: self.shard.warmup(request)  # noqa: E731
        return await self._start("Warmup", run, request, convert.warmup_from_pb, False)

    def clear_cache(self, batch_id: int | None = None, metadata=None) -> Awaitable[None]:
        request = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        return self._start("ClearCache", lambda: self.shard.clear_cache(request), request, _nothing)

    def filter_batch(self, batch_id: int, request_ids: Sequence[int], metadata=None) -> Awaitable:
        request = pb.FilterBatchRequest(batch_id=batch_id, request_ids=list(request_ids))
        return self._start("FilterBatch", lambda: self.shard.filter_batch(request), request, _filtered)

    def prefill(self, batch: NewBatch, cached_batch: CachedBatch | None = None, metadata=None) -> Awaitable:
        request = pb.PrefillRequest(batch=convert.batch_to_pb(batch))
        if cached_batch is not None:
            request.cached_batch.CopyFrom(convert.cached_batch_to_pb(cached_batch))
        run = lambda: self.shard.prefill(request)  # noqa: E731
        return self._start("Prefill", run, request, convert.step_result_from_pb)

    def decode(self, batches: Sequence[CachedBatch], metadata=None) -> Awaitable[StepResult]:
        request = pb.DecodeRequest(batches=[convert.cached_batch_to_pb(b) for b in batches])
        return self._start("Decode", lambda: self.shard.decode(request), request, convert.step_result_from_pb)

    async def close(self) -> None:
        return None


def _same(response: T) -> T:
    return response


def _nothing(response: Any) -> None:
    return None


def _filtered(response: pb.FilterBatchResponse) -> CachedBatch | None:
    return convert.cached_batch_from_pb(response.batch) if response.HasField("batch") else None


async def generate(scheduler: SchedulerCore, req: GenerateRequest) -> tuple[list[int], str]:
    """(positions of the tokens received, "end" | "error"); every token is one of this prompt's."""
    positions, end = await outcome(scheduler, req)
    return positions, end if end == "end" else "error"


async def outcome(scheduler: SchedulerCore, req: GenerateRequest) -> tuple[list[int], str]:
    """(positions of the tokens received, "end" or the error's message); every token is this prompt's."""
    positions: list[int] = []
    tag = tokens.tag(tokens.prompt_key(req.inputs))
    try:
        async for event in scheduler.generate(req):
            assert event.token.special or event.token.text.startswith(f" {tag}:"), (req.inputs, event.token)
            positions.append(event.token.id - tokens.TOKEN_ID_BASE)
            if isinstance(event, EndEvent):
                return positions, "end"
    except InferError as exc:
        return positions, exc.message
    raise AssertionError("no end")


async def run_all(scheduler: SchedulerCore, requests: list[GenerateRequest], timeout: float = 30):
    return await asyncio.wait_for(asyncio.gather(*(generate(scheduler, r) for r in requests)), timeout)


def conserved(scheduler: SchedulerCore, shard: InProcessShard) -> None:
    assert scheduler.state.running == {} and not scheduler.state.waiting
    assert_blocks_back(scheduler)
    if not shard.executor.dead:
        assert shard.shard.cache == {}


async def serve_all(shard: InProcessShard, policy: str, requests: list[GenerateRequest], **config):
    """Run `requests` to their end on a scheduler over `shard`: no KV write out of place, every block back."""
    return (await serve_waves(shard, policy, [requests], **config))[0]


async def serve_waves(shard: InProcessShard, policy: str, waves: list[list[GenerateRequest]], **config):
    """`serve_all` for waves of requests, one after the other, on one scheduler (its prefix cache too)."""
    scheduler = await start_scheduler(shard, policy, **config)
    results = []
    try:
        for requests in waves:
            results.append(await run_all(scheduler, requests))
            await settle(scheduler)
    finally:
        await scheduler.stop()
    assert shard.violations == []
    conserved(scheduler, shard)
    return results
