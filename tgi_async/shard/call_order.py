"""The shard side of call numbers (tgi_async/proto/call_order.py): start a router's calls in number order.

A call whose predecessors have not all started waits for them, then is handed to the model thread, whose queue
keeps that order. A number that will never start (its RPC was cancelled while it waited) is skipped as soon as
its turn comes; one that never arrived holds later calls back once, for at most `timeout` seconds. A new
router instance starts from number 0.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


class CallOrder:
    def __init__(self, timeout: float = 0.1) -> None:
        self.timeout = timeout
        self._instance: str | None = None
        self._next = 0
        self._abandoned: set[int] = set()  # numbers above `_next` whose calls gave up waiting
        self._changed = asyncio.Condition()

    async def turn(self, key: tuple[str, int] | None) -> None:
        """Return once every lower-numbered call of the same instance has had its turn (None: at once).

        NOTE: a call cancelled while it waits gives its number up, so it never holds later calls back.
        """
        if key is None:
            return
        instance, number = key
        async with self._changed:
            if instance != self._instance:
                self._instance, self._next, self._abandoned = instance, 0, set()
            try:
                if number > self._next:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._instance != instance or self._next >= number),
                        self.timeout,
                    )
            # NOTE: asyncio's own class: on Python 3.10 it is not the builtin TimeoutError.
            except asyncio.TimeoutError:
                logger.warning(
                    "calls numbered before %d never arrived: running it anyway",
                    number,
                    extra={"expected": self._next, "timeout_s": self.timeout},
                )
            except asyncio.CancelledError:
                if self._instance == instance and number > self._next:
                    self._abandoned.add(number)
                    self._advance(self._next)  # it may be the number the others wait for
                self._changed.notify_all()
                raise
            if self._instance == instance:
                self._advance(number + 1)
            self._changed.notify_all()

    def _advance(self, to: int) -> None:
        self._next = max(self._next, to)
        while self._next in self._abandoned:
            self._abandoned.discard(self._next)
            self._next += 1
