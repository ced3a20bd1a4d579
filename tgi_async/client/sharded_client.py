"""All shards of one model: every call goes to every shard (tensor parallelism), rank 0's answer is used."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tgi_async.client.shard_client import Metadata, ShardClient
from tgi_async.client.types import CachedBatch, NewBatch, ShardInfo, StepResult, WarmupResult

T = TypeVar("T")


class ShardedClient:
    def __init__(self, clients: Sequence[ShardClient]) -> None:
        if not clients:
            raise ValueError("ShardedClient needs at least one shard")
        self.clients = list(clients)

    @classmethod
    async def connect(cls, master_uds_path: str, call_timeout: float | None = None) -> ShardedClient:
        """Connect to the master shard, discover the others (ServiceDiscovery), connect to all.

        `call_timeout`: the deadline of every call on the shards' batches (see ShardClient)."""
        master = ShardClient(master_uds_path)
        urls = await master.service_discovery()
        await master.close()
        return cls([ShardClient(url, call_timeout) for url in urls])

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))

    async def _all(self, call: Callable[[ShardClient], Awaitable[T]]) -> list[T]:
        if len(self.clients) == 1:  # the common case: no gather overhead on the hot path
            return [await call(self.clients[0])]
        return list(await asyncio.gather(*(call(c) for c in self.clients)))

    async def info(self) -> ShardInfo:
        return await self.clients[0].info()

    async def health(self, timeout: float | None = None) -> None:
        await self._all(lambda c: c.health(timeout))

    def _started(self, start: Callable[[ShardClient], Awaitable[T]]) -> Awaitable[T]:
        """Start the call on every shard now, in rank order (ShardClient._start); awaits rank 0's answer."""
        calls = [start(c) for c in self.clients]
        return calls[0] if len(calls) == 1 else _first(asyncio.gather(*calls))

    def fence(self) -> Awaitable[None]:
        return self._started(lambda c: c.fence())

    def clear_cache(self, batch_id: int | None = None, metadata: Metadata | None = None) -> Awaitable[None]:
        return self._started(lambda c: c.clear_cache(batch_id, metadata))

    def filter_batch(
        self, batch_id: int, request_ids: Sequence[int], metadata: Metadata | None = None
    ) -> Awaitable[CachedBatch | None]:
        return self._started(lambda c: c.filter_batch(batch_id, request_ids, metadata))

    async def warmup(
        self,
        max_input_tokens: int | None,
        max_prefill_tokens: int,
        max_total_tokens: int | None,
        max_batch_size: int | None,
    ) -> WarmupResult:
        results = await self._all(
            lambda c: c.warmup(max_input_tokens, max_prefill_tokens, max_total_tokens, max_batch_size)
        )
        # Shards may hold different vocab slices and so fit different KV sizes: the smallest wins.
        return min(results, key=lambda r: (r.max_supported_total_tokens or 0, r.max_input_tokens))

    def prefill(
        self, batch: NewBatch, cached_batch: CachedBatch | None = None, metadata: Metadata | None = None
    ) -> Awaitable[StepResult]:
        return self._started(lambda c: c.prefill(batch, cached_batch, metadata))

    def decode(
        self, batches: Sequence[CachedBatch], metadata: Metadata | None = None
    ) -> Awaitable[StepResult]:
        return self._started(lambda c: c.decode(batches, metadata))


async def _first(results: Awaitable[list[T]]) -> T:
    return (await results)[0]
