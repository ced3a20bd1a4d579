"""A shard simulated in plain Python with TGI's flash-shard semantics, for property tests of the loops.

It stands in for `ShardedClient` (same methods, same plain-data results), so the real schedulers run against
it without sockets at thousands of steps per second. What it models, because the schedulers depend on it:
calls served one at a time in arrival order (with `dispatch_jitter`, like a shard that does not order the
router's numbered calls: calls that reach an idle shard together start in any order); finished requests
stay in their batch and keep generating until filtered (like TGI's shards); a batch whose requests all
finished is dropped and later calls naming it fail with NOT_FOUND; chunked prompts continue within the warmup
prefill budget; every KV write checks the request's slots, so a scheduler that overflows an allocation fails
the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import grpc

from tgi_async.client.shard_client import ShardError
from tgi_async.client.types import (
    CachedBatch,
    Generation,
    NewBatch,
    ShardInfo,
    StepResult,
    StepTimings,
    WarmupResult,
)
from tgi_async.scheduler.request import GeneratedText, Token


@dataclass
class SimRequest:
    id: int
    prompt_len: int
    max_new: int
    eos_at: int | None  # the generated token that is EOS (1-based), if any
    slots: int  # KV slots the router allocated (0: padded shard)
    computed: int = 0  # prompt tokens in KV
    chunk: int = 0  # prompt tokens to compute next step
    generated: int = 0
    finished: bool = False

    def tokens_next_step(self) -> int:
        return self.chunk if self.computed < self.prompt_len else 1


@dataclass
class SimulatedShard:
    eos_of: dict[
        str, int | None
    ]  # prompt text -> EOS position (tests encode each request's fate in its prompt)
    block_size: int = 16
    chunking: bool = True
    padded: bool = False  # TGI's CPU shard: padded batches, no KV blocks, no chunking
    total_tokens: int = 4096
    prefill_budget: int = 64
    batches: dict[int, list[SimRequest]] = field(default_factory=dict)
    overflows: list[str] = field(default_factory=list)
    calls: int = 0
    dispatch_jitter: random.Random | None = None  # None: the shard starts calls in the order they were sent
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- ShardedClient API -----------------------------------------------------------------------------------
    async def info(self) -> ShardInfo:
        chunking = self.chunking and not self.padded
        ordered = self.dispatch_jitter is None
        kind = (self.padded, "float32", "cpu", None, 0, chunking, False, "sim", self.block_size, ordered)
        return ShardInfo(*kind)

    async def health(self) -> None:
        return None

    async def warmup(self, max_input, max_prefill, max_total, max_batch_size) -> WarmupResult:
        self.prefill_budget = max_prefill
        supported = None if self.padded else self.total_tokens  # padded shards cannot size their cache
        return WarmupResult(supported, max_input or 1024, max_total or 2048)

    async def clear_cache(self, batch_id=None, metadata=None) -> None:
        async with self._serial():
            if batch_id is None:
                self.batches.clear()
            else:
                self.batches.pop(batch_id, None)

    async def filter_batch(self, batch_id, request_ids, metadata=None) -> CachedBatch | None:
        async with self._serial():
            batch = self._get(batch_id, "FilterBatch")
            if not request_ids:
                raise ShardError("FilterBatch", grpc.StatusCode.INVALID_ARGUMENT, "empty filter")
            keep = set(request_ids)
            self.batches[batch_id] = [r for r in batch if r.id in keep]
            return self._cached(batch_id)

    async def prefill(self, batch: NewBatch, cached_batch=None, metadata=None) -> StepResult:
        async with self._serial():
            new = []
            for r in batch.requests:
                prompt_len = r.request.input_length
                sim = SimRequest(
                    r.id,
                    prompt_len,
                    r.request.stopping.max_new_tokens,
                    self.eos_of.get(r.request.inputs),
                    len(r.slots),
                )
                sim.chunk = r.chunk_len if r.chunk_len is not None else prompt_len
                new.append(sim)
            if cached_batch is None:
                self.batches[batch.id] = new
                return self._step(batch.id)
            self._get(cached_batch.id, "Prefill").extend(new)  # concatenated into the cached batch's id
            return self._step(cached_batch.id)

    async def decode(self, batches, metadata=None) -> StepResult:
        async with self._serial():
            for b in batches:
                self._get(b.id, "Decode")  # validate all before mutating, like the bundled shard
            first = batches[0].id
            for b in batches[1:]:
                self.batches[first] += self.batches.pop(b.id)
            return self._step(first)

    async def close(self) -> None:
        return None

    # -- model -----------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _serial(self):
        self.calls += 1
        if self.dispatch_jitter is not None and not self._lock.locked():
            for _ in range(self.dispatch_jitter.randint(0, 3)):  # another call may arrive and start first
                await asyncio.sleep(0)
        async with self._lock:
            yield

    def _get(self, batch_id: int, method: str) -> list[SimRequest]:
        if batch_id not in self.batches:
            raise ShardError(method, grpc.StatusCode.NOT_FOUND, f"Batch ID {batch_id} not found in cache.")
        return self.batches[batch_id]

    def _cached(self, batch_id: int) -> CachedBatch:
        batch = self.batches[batch_id]
        ids = tuple(r.id for r in batch)
        current = sum(r.tokens_next_step() for r in batch)
        return CachedBatch(batch_id, ids, len(ids), sum(r.prompt_len + r.max_new for r in batch), current)

    def _step(self, batch_id: int) -> StepResult:
        generations = []
        for r in self.batches[batch_id]:
            if r.computed < r.prompt_len:
                self._write(r, r.computed + r.chunk)
                r.computed += r.chunk
                if r.computed < r.prompt_len:
                    continue
            else:
                self._write(r, r.prompt_len + r.generated)  # feeds the last generated token back
            r.generated += 1
            text = None
            if not r.finished:
                reason = "length" if r.generated >= r.max_new else None
                if reason is None and r.eos_at is not None and r.generated >= r.eos_at:
                    reason = "eos_token"
                if reason is not None:
                    r.finished = True
                    text = GeneratedText("x" * r.generated, r.generated, reason, None)
            token = Token(r.generated, "x", -1.0, False)
            generations.append(Generation(r.id, (token,), None, ((),), text))
        # the next prompt chunks, oldest request first, within the warmup budget
        budget = self.prefill_budget
        for r in self.batches[batch_id]:
            if r.computed < r.prompt_len:
                r.chunk = max(min(r.prompt_len - r.computed, budget), 1)
                budget -= r.chunk
        timings = StepTimings(1000, 100, 1200, None)
        if all(r.finished for r in self.batches[batch_id]):
            del self.batches[batch_id]
            return StepResult(tuple(generations), None, timings)
        return StepResult(tuple(generations), self._cached(batch_id), timings)

    def _write(self, r: SimRequest, kv_tokens: int) -> None:
        if r.slots and kv_tokens > r.slots:
            self.overflows.append(f"request {r.id}: {kv_tokens} KV tokens, {r.slots} slots")
