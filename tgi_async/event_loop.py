"""The event loop the router and the bundled shard run on: uvloop where installed (Linux/macOS).

Both processes' event loops sit on the hot path of every step: the router's (SSE writes, gRPC completions,
scheduling) and the shard's (receiving calls, handing results back from the model thread, answering). uvloop
cuts their CPU per step; on a machine where the shard shares its core with nothing but the model, that CPU is
taken from the model (measured: shard busy fraction 0.86 -> 0.91 in benchmarks.schedulers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
