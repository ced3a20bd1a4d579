"""Decoding sequences' keys and values, dense per sequence and kept from one decode step to the next (CPU).

NOTE: on CPU, gathering every sequence's whole context out of the paged cache (slot by slot) is the largest
part of a decode step. While the same requests keep decoding, this copy instead grows by one column a step:
each layer writes its new keys/values to the paged cache (the source of truth) and here. Any change (a request
joins, finishes or is filtered, a prompt chunk runs, the copy is full) makes the next decode step rebuild it
from the paged cache, which costs what the gather always cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tgi_async.shard.kv_cache import BLOCK_SIZE, KVCache, KVShape

HEADROOM = 4 * BLOCK_SIZE  # columns past the longest context: a rebuild every this many steps at most
MAX_BYTES = 256 << 20  # larger copies are not made: the step gathers from the paged cache instead


@dataclass(eq=False, slots=True)
class DecodeContext:
    request_ids: tuple[int, ...]  # the decoding requests, in step order
    lens: list[int]  # tokens of each one's context held here
    keys: list[torch.Tensor]  # per layer `[B, capacity, kv_heads, head_dim]` (finite, masked past a context)
    values: list[torch.Tensor]
    filled: list[bool]  # per layer: copied from the paged cache (a new context is, by its first step)
    positions: torch.Tensor  # `[B]` column of this step's new token (= lens before the step)
    rows: torch.Tensor  # `[B]` 0..B-1

    @classmethod
    def create(
        cls, request_ids: tuple[int, ...], lens: list[int], shape: KVShape, dtype: torch.dtype
    ) -> DecodeContext | None:
        """An empty context for these requests, or None if it would take more than MAX_BYTES."""
        capacity = -(-(max(lens) + 1 + HEADROOM) // BLOCK_SIZE) * BLOCK_SIZE
        size = (len(request_ids), capacity, shape.kv_heads, shape.head_dim)
        element = torch.empty((), dtype=dtype).element_size()
        if 2 * shape.num_layers * element * size[0] * size[1] * size[2] * size[3] > MAX_BYTES:
            return None
        # NOTE: zeros: columns past a context are masked, but a NaN there would still leak through SDPA
        return cls(
            request_ids,
            list(lens),
            [torch.zeros(size, dtype=dtype) for _ in range(shape.num_layers)],
            [torch.zeros(size, dtype=dtype) for _ in range(shape.num_layers)],
            [False] * shape.num_layers,
            torch.tensor(lens),
            torch.arange(len(request_ids)),
        )

    def serves(self, request_ids: tuple[int, ...], lens: Sequence[int]) -> bool:
        """Holds exactly these requests' contexts, with room for one more token each."""
        return request_ids == self.request_ids and list(lens) == self.lens and max(lens) < self.capacity

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def start_step(self) -> None:
        self.positions = torch.tensor(self.lens)

    def end_step(self) -> None:
        self.lens = [n + 1 for n in self.lens]

    def context(
        self,
        layer: int,
        cache: KVCache,
        key_slots: torch.Tensor,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's `[B, K, kv_heads, head_dim]` keys and values, the step's new token included.

        `key_slots` `[B, K]`: each context's slots (the paged layout's); `new_keys`/`new_values`
        `[B, kv_heads, head_dim]`: the step's token, already written to the paged cache."""
        width = key_slots.shape[1]
        keys, values = self.keys[layer], self.values[layer]
        if self.filled[layer]:
            keys[self.rows, self.positions] = new_keys
            values[self.rows, self.positions] = new_values
        else:
            gathered_keys, gathered_values = cache.gather(layer, key_slots)
            keys[:, :width] = gathered_keys
            values[:, :width] = gathered_values
            self.filled[layer] = True
        return keys[:, :width], values[:, :width]
