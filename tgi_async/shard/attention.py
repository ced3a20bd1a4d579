"""Paged attention over a packed batch, plugged into transformers through its public AttentionInterface.

One forward runs every token of a step (decodes and prefill chunks together) as ONE row of T tokens. Each
layer writes its new keys/values into their slots, gathers each sequence's context by slot, and runs torch
SDPA with a mask that keeps every query inside its own sequence and causal. Two layouts of the same math:

  packed  G=1: all T queries against all sequences' keys, block-diagonal causal mask (cheap when contexts
          are short next to the queries, e.g. one long prefill beside short decodes);
  padded  G=B: one group per sequence, queries padded to the longest chunk, keys to the longest context
          (cheap for decodes: B x 1 x K instead of B x B*K).

`build_layout` picks the one with fewer score entries; the per-step metadata (`PagedStep`) reaches the
attention function as a keyword argument of `model(...)`, which transformers forwards to every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from tgi_async.shard.decode_context import DecodeContext
from tgi_async.shard.kv_cache import KVCache

ATTENTION_NAME = "tgi_async_paged"
STEP_KWARG = "tgi_async_step"


@dataclass(slots=True)
class AttentionLayout:
    """Index tensors of one step, shared by all layers (G groups x Q query rows x K key columns)."""

    write_slots: torch.Tensor  # [T] slot of each packed token's new key/value
    key_slots: torch.Tensor  # [G, K] slot of each key column (padding points at a valid slot, masked)
    query_positions: torch.Tensor  # [G, Q] absolute position of each query row
    key_positions: torch.Tensor  # [G, K] absolute position of each key column (padding: past every query)
    key_groups: torch.Tensor | None  # [K] sequence of each key column (packed layout only)
    query_groups: torch.Tensor | None  # [T] sequence of each query (packed layout only)
    query_index: torch.Tensor | None  # [G, Q] packed token of each query row; None: identity (packed)
    output_index: torch.Tensor | None  # [T] row of the flattened [G*Q] output for each token; None: identity
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, sliding_window: int | None = None) -> torch.Tensor:
        """Boolean `[G, 1, Q, K]`: True where a query may attend a key (causal, own sequence, window)."""
        cached = self._masks.get(sliding_window)
        if cached is not None:
            return cached
        allowed = self.key_positions[:, None, :] <= self.query_positions[:, :, None]
        if sliding_window is not None:
            allowed &= self.key_positions[:, None, :] > self.query_positions[:, :, None] - sliding_window
        if self.key_groups is not None and self.query_groups is not None:
            allowed &= (self.key_groups[None, :] == self.query_groups[:, None])[None]
        mask = allowed[:, None]
        self._masks[sliding_window] = mask
        return mask


@dataclass(frozen=True, slots=True)
class SplitLayout:
    """Decodes and prefill chunks of one step attended separately (one forward, two SDPA calls per layer).

    NOTE: a long prompt chunk beside many decodes makes either single layout huge (packed: every query
    against every context; padded: every decode padded to the chunk's length); split, each part is cheap.
    """

    write_slots: torch.Tensor  # [T] slot of each packed token's new key/value
    parts: tuple[tuple[torch.Tensor, AttentionLayout], ...]  # (packed token indices, their layout)


@dataclass(frozen=True, slots=True)
class PagedStep:
    """What the attention function needs for one forward: the cache, the step's layout, and for a decode-only
    step on CPU the decoding requests' dense context (read instead of gathering from the cache)."""

    cache: KVCache
    layout: AttentionLayout | SplitLayout
    dense: DecodeContext | None = None


def build_layout(
    slot_table: torch.Tensor,
    cache_lens: list[int],
    chunk_lens: list[int],
    positions: torch.Tensor,
    packed: bool | None = None,
) -> AttentionLayout | SplitLayout:
    """Layout for sequences computing `chunk_lens[i]` new tokens after `cache_lens[i]` cached ones.

    `slot_table[i]` lists sequence i's slots (padded with a valid slot); `positions` `[T]` are the packed
    tokens' positions, sequences one after another. `packed`: force a layout (None: the cheapest, which
    splits decodes from prompt chunks when a step has both).
    """
    decodes = [i for i, n in enumerate(chunk_lens) if n == 1]
    if packed is not None or not decodes or len(decodes) == len(chunk_lens):
        return _single_layout(slot_table, cache_lens, chunk_lens, positions, packed)
    starts = [0]
    for n in chunk_lens:
        starts.append(starts[-1] + n)
    prefills = [i for i, n in enumerate(chunk_lens) if n > 1]
    parts = []
    for group in (decodes, prefills):
        tokens = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in group]).to(positions.device)
        index = torch.tensor(group, device=slot_table.device)
        layout = _single_layout(
            slot_table[index],
            [cache_lens[i] for i in group],
            [chunk_lens[i] for i in group],
            positions[tokens],
            None,
        )
        parts.append((tokens, layout))
    write_slots = torch.cat([layout.write_slots for _, layout in parts])
    order = torch.cat([tokens for tokens, _ in parts])
    ordered = torch.empty_like(write_slots)
    ordered[order] = write_slots
    return SplitLayout(write_slots=ordered, parts=tuple(parts))


def _single_layout(
    slot_table: torch.Tensor,
    cache_lens: list[int],
    chunk_lens: list[int],
    positions: torch.Tensor,
    packed: bool | None,
) -> AttentionLayout:
    device = slot_table.device
    batch = len(chunk_lens)
    total_queries = sum(chunk_lens)
    kv_lens_list = [c + n for c, n in zip(cache_lens, chunk_lens, strict=True)]
    max_queries, max_keys, total_keys = max(chunk_lens), max(kv_lens_list), sum(kv_lens_list)
    q_lens = torch.tensor(chunk_lens, device=device)
    kv_lens = torch.tensor(kv_lens_list, device=device)
    columns = torch.arange(max_keys, device=device)
    kv_valid = columns[None, :] < kv_lens[:, None]
    starts = torch.tensor(cache_lens, device=device)
    new_columns = starts[:, None] + torch.arange(max_queries, device=device)[None, :]
    new_valid = torch.arange(max_queries, device=device)[None, :] < q_lens[:, None]
    write_slots = slot_table.gather(1, new_columns.clamp(max=slot_table.shape[1] - 1))[new_valid]

    if packed is None:
        packed = total_queries * total_keys <= batch * max_queries * max_keys
    if packed:
        groups = torch.arange(batch, device=device)
        return AttentionLayout(
            write_slots=write_slots,
            key_slots=slot_table[:, :max_keys][kv_valid][None, :],
            query_positions=positions[None, :],
            key_positions=columns.expand(batch, max_keys)[kv_valid][None, :],
            key_groups=groups.repeat_interleave(kv_lens),
            query_groups=groups.repeat_interleave(q_lens),
            query_index=None,
            output_index=None,
        )

    query_starts = torch.cumsum(q_lens, 0) - q_lens
    rows = torch.minimum(torch.arange(max_queries, device=device)[None, :], (q_lens - 1)[:, None])
    query_index = query_starts[:, None] + rows
    query_groups = torch.arange(batch, device=device).repeat_interleave(q_lens)
    token = torch.arange(total_queries, device=device)
    output_index = query_groups * max_queries + token - query_starts[query_groups]
    key_positions = torch.where(kv_valid, columns[None, :], torch.iinfo(torch.int64).max)
    return AttentionLayout(
        write_slots=write_slots,
        key_slots=slot_table[:, :max_keys],
        query_positions=positions[query_index],
        key_positions=key_positions,
        key_groups=None,
        query_groups=None,
        query_index=None if max_queries == 1 else query_index,
        output_index=None if max_queries == 1 else output_index,
    )


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query `[1, H, T, D]`, key/value `[1, KVH, T, D]` -> `[1, T, H, D]`."""
    step: PagedStep | None = kwargs.get(STEP_KWARG)
    if step is None:
        raise RuntimeError(
            f"attention '{ATTENTION_NAME}' needs `{STEP_KWARG}` (only the bundled shard sets it)"
        )
    if softcap is not None:
        raise NotImplementedError("attention logit softcapping is not supported by the bundled shard")
    layout, layer, cache = step.layout, module.layer_idx, step.cache
    new_keys, new_values = key[0].transpose(0, 1), value[0].transpose(0, 1)
    cache.write(layer, layout.write_slots, new_keys, new_values)
    if isinstance(layout, AttentionLayout):
        if step.dense is not None:
            context = step.dense.context(layer, cache, layout.key_slots, new_keys, new_values)
        else:
            context = cache.gather(layer, layout.key_slots)
        return _attend(context, layout, query, scaling, sliding_window), None
    output = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
    for tokens, part in layout.parts:
        context = cache.gather(layer, part.key_slots)
        output[0, tokens] = _attend(context, part, query[:, :, tokens], scaling, sliding_window)[0]
    return output, None


def _attend(
    context: tuple[torch.Tensor, torch.Tensor],
    layout: AttentionLayout,
    query: torch.Tensor,
    scaling: float | None,
    sliding_window: int | None,
) -> torch.Tensor:
    """SDPA of `query` `[1, H, T, D]` against `context` (keys, values `[G, K, KVH, D]` at the layout's key
    slots) -> `[1, T, H, D]`."""
    keys, values = context[0].transpose(1, 2), context[1].transpose(1, 2)
    heads, head_dim, kv_heads = query.shape[1], query.shape[3], keys.shape[1]
    # One query per sequence (decodes) with grouped KV heads: fold each group's query heads into query rows
    # of its KV head, so SDPA reads every key once instead of expanding keys per query head.
    fold = layout.query_index is None and layout.key_groups is None and heads != kv_heads
    if layout.query_index is not None:
        queries = query[0][:, layout.query_index].transpose(0, 1)
    elif layout.key_groups is None:
        queries = query[0].transpose(0, 1)[:, :, None]
        if fold:
            queries = queries.reshape(-1, kv_heads, heads // kv_heads, head_dim)
    else:
        queries = query
    output = F.scaled_dot_product_attention(
        queries,
        keys,
        values,
        attn_mask=layout.mask(sliding_window),
        scale=scaling,
        enable_gqa=heads != kv_heads and not fold,
    )
    if fold:
        output = output.reshape(-1, heads, 1, head_dim)
    output = output.transpose(1, 2)
    if layout.key_groups is None:
        output = output.reshape(-1, heads, head_dim)
        if layout.output_index is not None:
            output = output[layout.output_index]
        output = output[None]
    return output


def register() -> str:
    """Register the attention function with transformers (idempotent); returns its name."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    return ATTENTION_NAME
