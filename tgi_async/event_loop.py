"""The event loop the router and the bundled shard run on: uvloop where installed (Linux/macOS).

Both processes' event loops sit on the hot path of every step: the router's (SSE writes, gRPC completions,
scheduling) and the shard's (receiving calls, handing results back from the model thread, answering). uvloop
cuts their CPU per step; on a machine where the shard shares its core with nothing but the model, that CPU is
taken from the model (measured: shard busy fraction 0.86 -> 0.91 in benchmarks.schedulers).

`kill -USR2 <pid>` writes the stack of every task of the loop to stderr (the log): where each coroutine
awaits, which a thread dump (SIGUSR1, tgi_async/cli.py) of a loop waiting in its selector cannot show;
tasks suspended alike are one entry with their count.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine, Iterable
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
    print(*describe_tasks(asyncio.all_tasks(loop)), sep="\n", file=sys.__stderr__, flush=True)


def describe_tasks(tasks: Iterable[asyncio.Task[Any]]) -> list[str]:
    """Each distinct chain of awaits the tasks are suspended in, outermost first, once with the tasks in it
    (a task's own stack has only its outermost coroutine; a thousand requests waiting alike are one entry)."""
    by_chain: dict[tuple[str, ...], list[str]] = {}
    for task in tasks:
        by_chain.setdefault(await_chain(task.get_coro()), []).append(task.get_name())
    lines = [f"--- {sum(map(len, by_chain.values()))} asyncio tasks, {len(by_chain)} distinct"]
    for chain, names in sorted(by_chain.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(repr(name) for name in names[:4]) + (", ..." if len(names) > 4 else "")
        lines.append(f"{len(names)} task{'s' if len(names) > 1 else ''} ({shown}):")
        lines.extend(chain)
    return lines


def await_chain(awaited: Any) -> tuple[str, ...]:
    """The frames of a coroutine and of what it awaits, down to the innermost, one traceback line each."""
    lines = []
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return tuple(lines)
