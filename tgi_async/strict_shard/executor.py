"""How the strict shard runs calls: one at a time, like TGI's shard, whose handlers block its event loop.

Every RPC (Health and Info included: they wait too) queues here and runs when the one before it answered, in
arrival order, as TGI's shard runs them; the router's call-number metadata is ignored. Calls that reach an
idle shard together are the exception, as in TGI: with `reorder` set they start in a seeded random order, and
`start_delay_s` holds a call that reaches an idle shard that long before anything starts (a loaded machine),
so calls sent soon after it join that group. Each call then holds the shard for the duration its step
reports, times `time_scale`. Injected faults, by step call number (Prefill, Decode and FilterBatch count,
from 1):
  fail   the call raises ValueError after losing the batches it names (TGI pops before it checks): INTERNAL
  crash  the same with a RuntimeError (a CUDA error): INTERNAL, then the shard exits ~0.5 s later, as TGI's
  hang   the call never answers, and nothing after it runs
  die    the process exits at once, mid-call (kill -9)
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tgi_async.strict_shard.shard import Step

logger = logging.getLogger(__name__)

FaultKind = Literal["fail", "crash", "hang", "die"]
FAULT_KINDS: tuple[FaultKind, ...] = ("fail", "crash", "hang", "die")
STEP_METHODS = ("Prefill", "Decode", "FilterBatch")
EXIT_DELAY_S = 0.5  # TGI's shard exits this long after a RuntimeError (its serve loop polls every 0.5 s)


def parse_fault(spec: str) -> tuple[int, FaultKind]:
    """`N:kind`: the N-th step call gets `kind`."""
    number, _, kind = spec.partition(":")
    if not number.isdigit() or kind not in FAULT_KINDS:
        raise ValueError(f"fault {spec!r}: expected N:{'|'.join(FAULT_KINDS)}")
    return int(number), kind  # type: ignore[return-value]


@dataclass(slots=True, eq=False)
class _Call:
    method: str
    run: Callable[[], Any]  # the call's effect on the shard: a response, or a Step with its duration
    lose: Callable[[], None]  # what the call does to its batches when it fails (TGI pops them first)
    answer: asyncio.Future


@dataclass
class SerialExecutor:
    time_scale: float = 1.0
    reorder: random.Random | None = None
    faults: dict[int, FaultKind] = field(default_factory=dict)
    fault_rate: float = 0.0  # each step call fails ("fail") with this chance
    start_delay_s: float = 0.0  # before a call that found the shard idle starts
    shutdown: Callable[[], None] = lambda: None  # a RuntimeError: stop serving, as TGI's shard does
    die: Callable[[int], None] = os._exit
    exit_delay_s: float = EXIT_DELAY_S
    dead: bool = False  # in-process use: the "process" died or shut down; calls fail with ConnectionError
    steps_run: int = 0
    _waiting: list[_Call] = field(default_factory=list)
    _together: list[_Call] = field(default_factory=list)  # calls that reached the shard while it was idle
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task | None = None
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    async def call(self, method: str, run: Callable[[], Any], lose: Callable[[], None] = lambda: None) -> Any:
        """Queue a call and wait for its answer (raises what the shard raised)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(method, run, lose, answer))
        self._arrived.set()
        return await answer

    async def _work(self) -> None:
        while True:
            if not self._waiting:
                while not self._waiting:
                    self._arrived.clear()
                    await self._arrived.wait()
                if self.start_delay_s:
                    await asyncio.sleep(self.start_delay_s)
                self._together = list(self._waiting)
            await self._run(self._next())

    def _next(self) -> _Call:
        """The oldest waiting call, or one of those that reached the idle shard together (`reorder`)."""
        together = [c for c in self._together if c in self._waiting]
        call = self._waiting[0]
        if self.reorder is not None and len(together) > 1:
            call = together[self.reorder.randrange(len(together))]
        self._waiting.remove(call)
        return call

    async def _run(self, call: _Call) -> None:
        if self.dead:
            call.answer.set_exception(ConnectionError("the shard is gone"))
            return
        fault = self._fault(call.method)
        if fault == "die":
            logger.error("injected fault: the shard dies during %s", call.method)
            self.die(1)  # does not return in a real process
            self.dead = True
            call.answer.set_exception(ConnectionError("the shard is gone"))
            return
        if fault == "hang":
            logger.error("injected fault: %s never answers", call.method)
            await asyncio.Event().wait()  # forever: nothing after it runs either
        started = time.perf_counter()
        try:
            if fault in ("fail", "crash"):
                call.lose()
                error = RuntimeError if fault == "crash" else ValueError
                raise error(f"strict shard: injected failure of {call.method} (step call {self.steps_run})")
            result = call.run()
        except Exception as exc:  # TGI's interceptor: every exception is an INTERNAL answer
            if not call.answer.done():
                call.answer.set_exception(exc)
            if isinstance(exc, RuntimeError):
                logger.error("%s: %s; exiting like TGI's shard", call.method, exc)
                asyncio.get_running_loop().call_later(self.exit_delay_s, self.shutdown)
            return
        duration_ms = 0.0
        if isinstance(result, Step):
            result, duration_ms = result.response, result.duration_ms
        if self.time_scale and duration_ms:
            # the step takes what the profile says, its bookkeeping here included
            elapsed = time.perf_counter() - started
            await asyncio.sleep(max(0.0, duration_ms * self.time_scale / 1000 - elapsed))
        if not call.answer.done():  # the caller may have given up (deadline)
            call.answer.set_result(result)

    def _fault(self, method: str) -> FaultKind | None:
        if method not in STEP_METHODS:
            return None
        self.steps_run += 1
        fault = self.faults.get(self.steps_run)
        if fault is None and self.fault_rate and self._rng.random() < self.fault_rate:
            fault = "fail"
        return fault
