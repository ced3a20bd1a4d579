"""The shard side of call numbers (tgi_async/proto/call_order.py): start a router's calls in number order.

A call whose predecessors have not all started waits for them, then is handed to the model thread, whose queue
keeps that order. A number that never arrives (a call cancelled before it was sent) holds later calls back for
at most `timeout` seconds. A new router instance starts from number 0.
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
        self._changed = asyncio.Condition()

    async def turn(self, key: tuple[str, int] | None) -> None:
        """Return once every lower-numbered call of the same instance has had its turn (None: at once)."""
        if key is None:
            return
        instance, number = key
        async with self._changed:
            if instance != self._instance:
                self._instance, self._next = instance, 0
            if number > self._next:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._instance != instance or self._next >= number),
                        self.timeout,
                    )
                except TimeoutError:
                    logger.warning(
                        "calls numbered before %d never arrived: running it anyway",
                        number,
                        extra={"expected": self._next, "timeout_s": self.timeout},
                    )
            if self._instance == instance:
                self._next = max(self._next, number + 1)
            self._changed.notify_all()
