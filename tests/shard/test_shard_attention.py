"""Paged attention (both layouts) equals plain causal attention of each sequence over its own tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tgi_async.shard.attention import (
    STEP_KWARG,
    PagedStep,
    SplitLayout,
    build_layout,
    paged_attention_forward,
)
from tgi_async.shard.kv_cache import KVCache, KVShape

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


class Layer(torch.nn.Module):
    layer_idx = 0


def reference_attention(q, k, v, window=None):
    """q [H, L, D], k/v [KVH, L, D]: causal (optionally windowed) attention of one whole sequence."""
    length = q.shape[1]
    pos = torch.arange(length)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[None, :] > pos[:, None] - window
    k, v = k.repeat_interleave(HEADS // KV_HEADS, 0), v.repeat_interleave(HEADS // KV_HEADS, 0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1)  # [L, H, D]


@pytest.mark.parametrize("packed", [True, False, None])
@pytest.mark.parametrize("window", [None, 3])
def test_paged_attention_matches_per_sequence_attention(packed, window):
    torch.manual_seed(0)
    # (cached tokens, new tokens) per sequence: decodes, a first chunk, a later chunk
    shapes = [(5, 1), (0, 7), (9, 4), (1, 1), (0, 1)]
    cache = KVCache(KVShape(1, KV_HEADS, HEAD_DIM, torch.float32), 16, torch.device("cpu"), torch.float32)
    full = [
        (
            torch.randn(HEADS, c + n, HEAD_DIM),
            torch.randn(KV_HEADS, c + n, HEAD_DIM),
            torch.randn(KV_HEADS, c + n, HEAD_DIM),
        )
        for c, n in shapes
    ]
    # scattered, non-contiguous slots per sequence, like a router's blocks
    order = torch.randperm(cache.num_slots)[: sum(c + n for c, n in shapes)].tolist()
    slots, start = [], 0
    for c, n in shapes:
        slots.append(order[start : start + c + n])
        start += c + n
    for (c, _), s, (_, k, v) in zip(shapes, slots, full, strict=True):
        if c:
            cache.write(0, torch.tensor(s[:c]), k[:, :c].transpose(0, 1), v[:, :c].transpose(0, 1))
    width = max(len(s) for s in slots) + 3
    table = torch.zeros(len(shapes), width, dtype=torch.long)
    for i, s in enumerate(slots):
        table[i, : len(s)] = torch.tensor(s)
    positions = torch.cat([torch.arange(c, c + n) for c, n in shapes])
    layout = build_layout(table, [c for c, _ in shapes], [n for _, n in shapes], positions, packed=packed)
    q = torch.cat([q[:, c:] for (c, _), (q, _, _) in zip(shapes, full, strict=True)], dim=1)[None]
    k = torch.cat([k[:, c:] for (c, _), (_, k, _) in zip(shapes, full, strict=True)], dim=1)[None]
    v = torch.cat([v[:, c:] for (c, _), (_, _, v) in zip(shapes, full, strict=True)], dim=1)[None]

    out, _ = paged_attention_forward(
        Layer(),
        q,
        k,
        v,
        None,
        scaling=HEAD_DIM**-0.5,
        sliding_window=window,
        **{STEP_KWARG: PagedStep(cache, layout)},
    )

    assert out.shape == (1, positions.numel(), HEADS, HEAD_DIM)
    expected = torch.cat(
        [
            reference_attention(q_, k_, v_, window)[c:]
            for (c, _), (q_, k_, v_) in zip(shapes, full, strict=True)
        ]
    )
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    # the new keys/values were written at their slots
    for s, (_, k_, _) in zip(slots, full, strict=True):
        torch.testing.assert_close(cache.keys[0][torch.tensor(s)], k_.transpose(0, 1))


def test_the_cheaper_layout_is_chosen():
    table = torch.arange(4 * 64).view(4, 64)
    decodes = build_layout(table, [50, 50, 50, 50], [1, 1, 1, 1], torch.tensor([50, 50, 50, 50]))
    assert decodes.key_groups is None and decodes.key_slots.shape == (4, 51)
    prefills = build_layout(table[:2], [0, 3], [60, 2], torch.cat([torch.arange(60), torch.arange(3, 5)]))
    assert prefills.key_groups is not None and prefills.key_slots.shape == (1, 65)


def test_a_step_with_decodes_and_a_prompt_chunk_is_split():
    table = torch.arange(4 * 64).view(4, 64)
    positions = torch.cat([torch.tensor([50]), torch.arange(60), torch.tensor([40])])
    layout = build_layout(table[:3], [50, 0, 40], [1, 60, 1], positions)
    assert isinstance(layout, SplitLayout)
    (decode_tokens, decodes), (prefill_tokens, prefill) = layout.parts
    assert decode_tokens.tolist() == [0, 61] and decodes.key_slots.shape == (2, 51)
    assert prefill_tokens.tolist() == list(range(1, 61)) and prefill.key_slots.shape[-1] == 60
    assert layout.write_slots.tolist() == [50, *range(64, 124), 168]
