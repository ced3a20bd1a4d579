"""The paged KV cache: one key and one value tensor per layer, addressed by the router's slots.

A slot is `block * BLOCK_SIZE + offset`, exactly as TGI's router allocates them, so the router owns placement
and the shard only writes and reads the slots it is told. Block 0 is the router's health-check block: it is
allocated like any other, the router simply never hands it to a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_SIZE = 16

# --kv-cache-dtype values (TGI's names) -> storage dtype; compute always happens in the model's dtype
KV_CACHE_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass(frozen=True, slots=True)
class KVShape:
    """What one cached token costs: layers x (key + value) x kv_heads x head_dim elements of `dtype`."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.head_dim * element

    @classmethod
    def from_config(cls, config, dtype: torch.dtype) -> KVShape:
        """Read layers, kv heads and head size from a transformers config (the text config of a VLM)."""
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(num_layers=config.num_hidden_layers, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)


class KVCache:
    """Per-layer `[(num_blocks + 1) * BLOCK_SIZE, kv_heads, head_dim]` key and value tensors: the router's
    blocks, then one scratch block no request is given (padding rows of a decode graph write there)."""

    def __init__(self, shape: KVShape, num_blocks: int, device: torch.device, compute_dtype: torch.dtype):
        self.shape = shape
        self.num_blocks = num_blocks
        self.num_slots = num_blocks * BLOCK_SIZE
        self.scratch_slot = self.num_slots  # the first slot past the router's
        self.compute_dtype = compute_dtype
        size = (self.num_slots + BLOCK_SIZE, shape.kv_heads, shape.head_dim)
        self.keys = [_zeros(size, shape.dtype, device) for _ in range(shape.num_layers)]
        self.values = [_zeros(size, shape.dtype, device) for _ in range(shape.num_layers)]

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store `keys`/`values` `[T, kv_heads, head_dim]` at `slots` `[T]`."""
        self.keys[layer].index_copy_(0, slots, keys.to(self.shape.dtype))
        self.values[layer].index_copy_(0, slots, values.to(self.shape.dtype))

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at `slots` (any shape S), as `[*S, kv_heads, head_dim]` in the compute dtype."""
        # NOTE: index_select over the flat slots, not `cache[slots]`: advanced indexing with a 2-D index
        # costs ~3x more per row on CPU, and this gather is the largest part of a decode step there.
        flat, shape = slots.reshape(-1), (*slots.shape, self.shape.kv_heads, self.shape.head_dim)
        keys = self.keys[layer].index_select(0, flat).view(shape)
        values = self.values[layer].index_select(0, flat).view(shape)
        if keys.dtype != self.compute_dtype:
            keys, values = keys.to(self.compute_dtype), values.to(self.compute_dtype)
        return keys, values


def _zeros(size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor; on CPU from calloc'd pages the kernel maps on first write, so a large cache costs
    neither startup time nor resident memory until slots are used.

    NOTE: zeros, not `empty`: padded key columns read slots never written, and a NaN there would leak
    through SDPA's masked product (0 * NaN)."""
    if device.type != "cpu":
        return torch.zeros(size, dtype=dtype, device=device)
    element = torch.empty((), dtype=dtype).element_size()
    count = 1
    for dim in size:
        count *= dim
    return torch.from_numpy(np.zeros(count * element, dtype=np.uint8)).view(dtype).view(size)


def available_cpu_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable), or a conservative guess without /proc."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return pages * os.sysconf("SC_PAGE_SIZE") if pages else 4 << 30


def blocks_for_budget(budget_bytes: int, shape: KVShape, min_blocks: int) -> int:
    """How many blocks fit in `budget_bytes`, never fewer than `min_blocks` (what warmup itself needs)."""
    per_block = shape.bytes_per_token * BLOCK_SIZE
    return max(int(budget_bytes // per_block), min_blocks)
