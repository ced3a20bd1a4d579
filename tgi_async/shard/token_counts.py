"""Per-request token counts of a growing history, updated incrementally (repetition / frequency penalties).

Rebuilding counts from whole histories costs O(history) per decode step (tens of ms at a few thousand tokens
times 64 rows); counting only what each history gained since the last step costs O(new tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenCounts:
    """`counts[t]`: occurrences of token t in one request's history; `seen`: how much of it was counted.

    NOTE: one object per request, shared (not copied) by every sampler that holds the request, so a filtered
    sampler's updates are seen by the batch's own. Histories only grow (prompt + generated ids); a history
    shorter than what was counted is counted again from scratch.
    """

    __slots__ = ("counts", "seen")

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # [V] float32, allocated at the first update
        self.seen = 0

    def update(self, history: Sequence[int], vocab_size: int, device: torch.device) -> None:
        """Count what `history` gained since the previous update."""
        stale = self.counts is None or self.counts.shape[0] != vocab_size or self.counts.device != device
        if stale or len(history) < self.seen:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self.seen = 0
        new = history[self.seen :]
        self.seen = len(history)
        if len(new) == 0:
            return
        ids = torch.as_tensor(new if isinstance(new, torch.Tensor) else list(new), dtype=torch.long)
        # NOTE: ids outside the vocabulary (never produced by the model) are not counted.
        ids = ids[(ids >= 0) & (ids < vocab_size)].to(device)
        self.counts.index_put_((ids,), torch.ones(ids.numel(), device=device), accumulate=True)


def batch_counts(
    rows: Sequence[TokenCounts], histories: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update each row from its history; returns counts `[R, V]` and history lengths `[R, 1]` (float32)."""
    for counts, history in zip(rows, histories, strict=True):
        counts.update(history, vocab_size, device)
    lengths = torch.tensor([c.seen for c in rows], dtype=torch.float32, device=device).unsqueeze(1)
    return torch.stack([c.counts for c in rows]), lengths
