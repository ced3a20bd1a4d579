"""Call numbers in gRPC metadata, so a shard can run a pipelining router's calls in the order it sent them.

gRPC orders nothing across RPCs: two calls that reach an idle server together may start in either order, and a
router that queues the next step before the previous one returns (the async scheduler) depends on that order.
Each call that reads or changes the shard's batches carries `x-tgi-async-call: <router instance>/<number>`;
shards that know the header (the bundled one) start the calls of an instance in number order, and say so in
the initial metadata of their Info answer (`x-tgi-async-ordered-calls: 1`). Others (TGI's shards) ignore it:
metadata they do not read changes nothing for them.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

METADATA_KEY = "x-tgi-async-call"
ORDERED_KEY = "x-tgi-async-ordered-calls"


class CallNumbers:
    """The router side: one instance id per client, numbers 0, 1, 2... in the order calls are issued."""

    def __init__(self) -> None:
        self.instance = secrets.token_hex(8)
        self._numbers = itertools.count()

    def next(self) -> tuple[str, str]:
        return METADATA_KEY, f"{self.instance}/{next(self._numbers)}"


def parse(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, int] | None:
    """(instance, number) from a call's metadata; None when absent or malformed (the call is not ordered)."""
    for key, value in metadata or ():
        if key != METADATA_KEY:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        instance, _, number = text.rpartition("/")
        return (instance, int(number)) if instance and number.isdigit() else None
    return None


def announces_ordering(metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
    """Whether a shard's Info answer (its initial metadata) says it starts numbered calls in order."""
    return any(key == ORDERED_KEY for key, _ in metadata or ())
