"""What the HTTP API needs from a scheduler; `sync` and `async` policies both implement it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from tgi_async.scheduler.request import GenerateRequest, InferEvent


class Scheduler(Protocol):
    def generate(self, request: GenerateRequest) -> AsyncIterator[InferEvent]:
        """Queue `request` and yield its events as the shard produces them.

        Raises `InferError` on failure (after any events already yielded). Closing the iterator early
        (`aclose()`, e.g. the HTTP client left) cancels the request: it is filtered out of its batch at the
        next step and its KV blocks are freed.
        """
        ...

    async def health(self) -> bool:
        """True when the shards answer (a Health RPC, or a step that succeeded recently)."""
        ...

    @property
    def queue_size(self) -> int:
        """Requests waiting for their first prefill."""
        ...
