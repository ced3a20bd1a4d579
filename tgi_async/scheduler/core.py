"""What both policies share: accepting requests, streaming their events, health, start/stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tgi_async.client.shard_client import ShardError
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import ShardInfo
from tgi_async.scheduler.admission import ShardShape
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.request import EndEvent, GenerateRequest, InferError, InferEvent
from tgi_async.scheduler.state import SchedulerState
from tgi_async.scheduler.steps import StepRunner

logger = logging.getLogger(__name__)

HEALTHY_WITHIN_S = 5.0  # a step that succeeded this recently proves the shards healthy


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
        )
        self.state = SchedulerState(shape, config.max_batch_total_tokens, info.window_size)
        self.steps = StepRunner(client, self.state)
        self.wakeup = asyncio.Event()  # set when work arrives or a request is cancelled
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(name, factory), name=name) for name, factory in self._loops()
        ]

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
        if time.monotonic() - self.steps.last_success < HEALTHY_WITHIN_S:
            return True
        try:
            await asyncio.wait_for(self.client.health(), timeout=10)
        except (ShardError, asyncio.TimeoutError) as exc:
            logger.warning("shard health check failed: %s", exc)
            return False
        return True

    async def _wait_for_work(self) -> None:
        while not self.state.waiting:
            self.wakeup.clear()
            await self.wakeup.wait()

    async def _wait_for_change(self) -> None:
        """Nothing could be admitted: sleep until a request arrives, leaves, or frees KV blocks."""
        self.wakeup.clear()
        await self.wakeup.wait()
