"""Batched logits transforms with TGI's next-token-chooser semantics: penalties, bias, watermark, warpers.

Pure tensor functions over `scores[B, V]` (float32) and per-row parameter columns `[B, 1]`; each returns new
scores and never writes into its input. A row whose parameter is the neutral value (penalty 1, top_k 0,
top_p 1, ...) comes out unchanged, so a row's result never depends on the other rows of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# NOTE: TGI seeds the green list with this prime times the previous token (Kirchenbauer et al.'s hash).
WATERMARK_HASH_KEY = 15485863

_NEG_INF = float("-inf")


def repetition_penalty(scores: torch.Tensor, counts: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's penalty on every token already seen: negative scores times `penalty`, others divided by it."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(counts > 0, penalized, scores)


def frequency_penalty(
    scores: torch.Tensor, counts: torch.Tensor, lengths: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """TGI's frequency penalty: subtract `penalty` times each token's share of the history."""
    return scores - counts / lengths.clamp(min=1) * penalty


def watermark_greenlist(previous_token: int, vocab_size: int, gamma: float) -> torch.Tensor:
    """The green list after `previous_token`: the first `int(V * gamma)` ids of a seeded permutation (CPU)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(WATERMARK_HASH_KEY * previous_token)
    permutation = torch.randperm(vocab_size, generator=generator)
    return permutation[: int(vocab_size * gamma)]


def watermark(
    scores: torch.Tensor,
    rows: Sequence[int],
    previous_tokens: Sequence[int],
    settings: Sequence[tuple[float, float]],
) -> torch.Tensor:
    """Add `delta` to the green-listed tokens of each given row; `settings`: each row's (gamma, delta)."""
    out = scores.clone()
    vocab_size = scores.shape[-1]
    for row, previous, (gamma, delta) in zip(rows, previous_tokens, settings, strict=True):
        green = watermark_greenlist(previous, vocab_size, gamma).to(scores.device)
        out[row, green] += delta
    return out


def logit_bias(
    scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Add `values` at `(rows, cols)`; columns beyond the scores' width are dropped."""
    keep = cols < scores.shape[-1]
    out = scores.clone()
    out.index_put_((rows[keep], cols[keep]), values[keep], accumulate=True)
    return out


def temperature(scores: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    return scores / temperatures


def top_k(scores: torch.Tensor, k: torch.Tensor, max_k: int | None = None) -> torch.Tensor:
    """Keep each row's `k` best scores and ties with the k-th (k = 0: row untouched).

    `max_k`: the largest k when the caller knows it (saves a device sync).
    """
    vocab_size = scores.shape[-1]
    k = k.clamp(max=vocab_size)
    max_k = min(int(k.max()) if max_k is None else max_k, vocab_size)
    if max_k <= 0:
        return scores
    best = torch.topk(scores, max_k, dim=-1).values
    kth = best.gather(1, (k - 1).clamp(min=0))
    kth = torch.where(k == 0, torch.full_like(kth, _NEG_INF), kth)
    return scores.masked_fill(scores < kth, _NEG_INF)


def top_p(scores: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Nucleus: drop the least likely tokens whose cumulative probability is <= `1 - p` (p = 1: untouched).

    The most likely token always stays.
    """
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    # NOTE: rows with p = 1 get a threshold of -1 so even zero-probability tokens stay (TGI drops them when
    # another row of the batch enables top-p; this keeps a row's result independent of its batch).
    threshold = torch.where(p < 1.0, 1.0 - p, torch.full_like(p, -1.0))
    remove_sorted = cumulative <= threshold
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, _NEG_INF)


def typical_p(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling (Meister et al.): keep the tokens whose surprisal is closest to the entropy,
    up to cumulative probability `mass` (mass = 1: untouched)."""
    vocab_size = scores.shape[-1]
    log_probs = torch.log_softmax(scores, dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = torch.sort(distance, descending=False, dim=-1)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=vocab_size - 1)
    last = torch.where(mass.squeeze(1) >= 1.0, torch.full_like(last, vocab_size - 1), last)
    remove_sorted = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, _NEG_INF)
