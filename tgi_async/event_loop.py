"""The event loop the router and the bundled shard run on: uvloop where installed (Linux/macOS).

Both processes' event loops sit on the hot path of every step: the router's (SSE writes, gRPC completions,
scheduling) and the shard's (receiving calls, handing results back from the model thread, answering). uvloop
cuts their CPU per step; on a machine where the shard shares its core with nothing but the model, that CPU is
taken from the model (measured: shard busy fraction 0.86 -> 0.91 in benchmarks.schedulers).

`kill -USR2 <pid>` writes the stack of every task of the loop to stderr (the log): where each coroutine
awaits, which a thread dump (SIGUSR1, tgi_async/cli.py) of a loop waiting in its selector cannot show.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_with_task_dumps(main))
    return uvloop.run(_with_task_dumps(main))


async def _with_task_dumps(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    if hasattr(signal, "SIGUSR2"):
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks, loop)
    return await main


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Each task and the chain of awaits it is suspended in, outermost first (a task's own stack has only
    its outermost coroutine)."""
    tasks = asyncio.all_tasks(loop)
    lines = [f"--- {len(tasks)} asyncio tasks"]
    for task in tasks:
        lines.append(f"Task {task.get_name()!r}:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                lines.append(
                    f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}'
                )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    print(*lines, sep="\n", file=sys.__stderr__, flush=True)
