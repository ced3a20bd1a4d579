"""The strict shard's KV ledger: every KV write is checked against the slots the router gave the request.

TGI's flash shards check none of this: a write past a request's slots lands in the next request's first
slot (silent corruption) or out of the cache (a CUDA error, after which the shard exits). The ledger turns
such a write into `KvViolation`, which the shard reports as TGI reports a CUDA error: INTERNAL, then it exits.
It also records what each slot holds (a hash of the tokens up to that position), so a request told that its
prefix is cached (`cache_len`) can be checked against what those slots really hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class KvViolation(RuntimeError):
    """A KV write or read outside what the router allocated: what would be memory corruption on a GPU."""


@dataclass(slots=True)
class KvLedger:
    block_size: int
    num_slots: int | None = None  # slots in the KV cache (set by Warmup); None: not checked yet
    owner: dict[int, int] = field(default_factory=dict)  # slot -> id of the live request that wrote it
    content: dict[int, int] = field(default_factory=dict)  # slot -> hash of the tokens up to its position

    def write(self, request_id: int, slots: list[int], position: int, content: int) -> None:
        """Request `request_id` writes the KV of `position` into `slots[position]`."""
        if position >= len(slots):
            raise KvViolation(
                f"CUDA error: an illegal memory access was encountered (strict shard: request {request_id} "
                f"wrote KV position {position} past its {len(slots)} slots; TGI's shard would overwrite the "
                "next request's first slot, or write out of the cache)"
            )
        slot = slots[position]
        if slot < self.block_size:
            raise KvViolation(f"request {request_id} wrote slot {slot}: block 0 is reserved (health checks)")
        if self.num_slots is not None and slot >= self.num_slots:
            raise KvViolation(
                f"CUDA error: device-side assert triggered (strict shard: request {request_id} wrote slot "
                f"{slot}, the KV cache has {self.num_slots})"
            )
        other = self.owner.get(slot)
        if other is not None and other != request_id and self.content.get(slot) != content:
            raise KvViolation(
                f"request {request_id} overwrote slot {slot} (position {position}) that live request {other} "
                "wrote: two requests were given the same KV slot"
            )
        self.owner[slot] = request_id
        self.content[slot] = content

    def check_prefix(self, request_id: int, slots: list[int], hashes: list[int], cache_len: int) -> None:
        """A request says its first `cache_len` positions are cached: their slots must hold exactly them."""
        if cache_len > len(slots):
            raise KvViolation(f"request {request_id}: cache_len {cache_len} but only {len(slots)} slots")
        for position in range(cache_len):
            slot = slots[position]
            if self.content.get(slot) != hashes[position]:
                raise KvViolation(
                    f"prefix cache: request {request_id} reuses slot {slot} for position {position}, which "
                    "does not hold its prefix (the KV there was written for other tokens, or never)"
                )

    def release(self, request_id: int, slots: list[int]) -> None:
        """The request left the shard: its slots may be written by others. Contents stay (prefix caching)."""
        for slot in slots:
            if self.owner.get(slot) == request_id:
                del self.owner[slot]

    def clear(self) -> None:
        self.owner.clear()
