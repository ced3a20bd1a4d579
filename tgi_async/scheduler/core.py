"""What both policies share: accepting requests, streaming their events, health, start/stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tgi_async import metrics
from tgi_async.client.shard_client import ShardError
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import NewBatch, NewRequest, ShardInfo
from tgi_async.scheduler.admission import ShardShape
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.request import (
    EndEvent,
    GenerateRequest,
    InferError,
    InferEvent,
    SamplingParameters,
    StoppingParameters,
)
from tgi_async.scheduler.state import SchedulerState
from tgi_async.scheduler.steps import StepRunner

logger = logging.getLogger(__name__)

# The adapters TGI's shards load at start (the launcher hands LORA_ADAPTERS to the shard and the router): all
# stay loaded, so all can serve a batch at once.
LORA_ADAPTERS = tuple(a for a in os.environ.get("LORA_ADAPTERS", "").split(",") if a.strip())

# TGI's liveness check: one token computed in a batch of its own, in block 0 (never allocated to requests)
LIVENESS_ID = (1 << 64) - 1
LIVENESS_BATCH = NewBatch(
    id=LIVENESS_ID,
    requests=(
        NewRequest(
            id=LIVENESS_ID,
            request=GenerateRequest(
                inputs="liveness",
                input_length=1,
                sampling=SamplingParameters(),
                stopping=StoppingParameters(max_new_tokens=1),
                truncate=1,
                add_special_tokens=False,
            ),
            blocks=(0,),
            slots=(0,),
        ),
    ),
    max_tokens=2,
    max_blocks=1,
)


class SchedulerCore:
    """Implements the `Scheduler` protocol around a policy's `_run()` loop(s)."""

    def __init__(
        self, client: ShardedClient, info: ShardInfo, config: SchedulerConfig, extra_slots: int = 0
    ) -> None:
        self.client = client
        self.info = info
        self.config = config
        shape = ShardShape(
            requires_padding=info.requires_padding,
            block_size=max(info.block_size, 1),
            speculate=info.speculate,
            support_chunking=info.support_chunking,
            extra_slots=extra_slots,
            prefix_caching=info.use_prefix_caching and not info.requires_padding,
        )
        self.state = SchedulerState(shape, config.max_batch_total_tokens, info.window_size)
        # NOTE: no forward may be larger than the one Warmup profiled (TGI's shards sized their KV cache after
        # it): a decode computes 1 + speculate tokens per request, so the batch holds this many at most.
        self.max_rows = min(
            config.max_batch_prefill_tokens // (1 + info.speculate), config.max_batch_size or sys.maxsize
        )
        self.steps = StepRunner(client, self.state)
        self.wakeup = asyncio.Event()  # set when work arrives or a request is cancelled
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(name, factory), name=name) for name, factory in self._loops()
        ]
        metrics.REGISTRY.before_render = self._set_scraped_gauges

    def _set_scraped_gauges(self) -> None:
        """The endpoint picker's gauges (Gateway API Inference Extension), from the state as it is now."""
        state = self.state
        metrics.KV_CACHE_USAGE.set(state.kv_cache_usage())
        allocator = state.allocator
        metrics.CACHE_CONFIG_INFO.clear()  # one series: the labels are the values
        blocks = allocator.total_blocks - 1 if allocator is not None else 0
        metrics.CACHE_CONFIG_INFO.labels(str(state.shape.block_size), str(blocks)).set(1)
        running, waiting = state.adapters()
        metrics.LORA_REQUESTS_INFO.clear()
        metrics.LORA_REQUESTS_INFO.labels(
            str(len(LORA_ADAPTERS)), ",".join(sorted(running)), ",".join(sorted(waiting))
        ).set(time.time())

    def _loops(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """(name, loop coroutine function) for each loop of the policy."""
        raise NotImplementedError

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop forever; if it crashes (a bug), fail the requests in the shards and start over clean."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s crashed; failing in-flight requests and restarting it", name)
                await self._reset(InferError("Request failed during generation: internal error"))

    async def _reset(self, error: InferError) -> None:
        for entry in list(self.state.running.values()):
            entry.fail(error)
            self.state.release(entry.id)
        try:
            await self.client.clear_cache(None)
        except ShardError as exc:
            logger.error("clear_cache failed: %s", exc)

    async def stop(self) -> None:
        if metrics.REGISTRY.before_render == self._set_scraped_gauges:
            metrics.REGISTRY.before_render = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- Scheduler protocol -------------------------------------------------------------------------------
    @property
    def queue_size(self) -> int:
        return self.state.queue_size

    async def generate(self, request: GenerateRequest) -> AsyncIterator[InferEvent]:
        entry = self.state.append(request)
        self.wakeup.set()
        try:
            while True:
                item = await entry.outbox.get()
                if isinstance(item, InferError):
                    raise item
                yield item
                if isinstance(item, EndEvent):
                    return
        finally:
            if not entry.ended:  # the consumer left early: the loops filter it out at the next step
                entry.cancelled = True
                self.wakeup.set()

    async def health(self) -> bool:
        """TGI's health check (a Health call while steps succeed, a liveness Prefill after one failed), plus
        what a pipeline knows: a call stalled past `health_stall_s` or a shard gone is unhealthy at once,
        where TGI's /health would wait on it."""
        steps, now = self.steps, time.monotonic()
        if steps.in_flight:  # the shard is busy: what its calls say is the answer, at once
            if now - min(steps.in_flight.values()) > self.config.health_stall_s:
                logger.warning("a shard call has run for over %.1f s", self.config.health_stall_s)
                return False
            return steps.healthy and not steps.shard_gone
        # Idle: ask the shard, as TGI does (a Unix-socket RPC, ~1 ms); a recent success proves nothing about a
        # shard killed since.
        timeout = self.config.health_stall_s
        try:
            if steps.healthy:
                await self.client.health(timeout=timeout)
            else:
                await asyncio.wait_for(self.client.prefill(LIVENESS_BATCH), timeout)
        except (ShardError, asyncio.TimeoutError) as exc:
            logger.warning("shard health check failed: %s", exc)
            return False
        steps.healthy, steps.shard_gone = True, False
        return True

    async def _wait_for_work(self) -> None:
        while not self.state.waiting:
            self.wakeup.clear()
            await self.wakeup.wait()

    async def _wait_for_change(self) -> None:
        """Nothing could be admitted: sleep until a request arrives, leaves, or frees KV blocks."""
        self.wakeup.clear()
        await self.wakeup.wait()
