"""When a request stops: TGI's StoppingCriteria (length, then EOS, then stop sequences), bounded window."""

from __future__ import annotations

from collections.abc import Iterable

from tgi_async.proto import pb

# NOTE: the window of output text kept for stop-sequence matching is trimmed back to the longest stop sequence
# (plus a possible trailing newline, see `_ends_with`) once it grows past this many times that length, so each
# token costs O(longest stop sequence), never O(output length).
_TRIM_FACTOR = 4


class StoppingCriteria:
    """Counts a request's generated tokens and says when it must stop, and why (a pb.FinishReason value)."""

    def __init__(
        self,
        max_new_tokens: int,
        eos_token_ids: Iterable[int] = (),
        stop_sequences: Iterable[str] = (),
        ignore_eos_token: bool = False,
    ):
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = frozenset(eos_token_ids)
        self.stop_sequences = tuple(stop_sequences)
        self.ignore_eos_token = ignore_eos_token
        self.current_tokens = 0
        self._keep = max((len(s) for s in self.stop_sequences), default=0) + 1
        self._window = ""

    @classmethod
    def from_pb(cls, params: pb.StoppingCriteriaParameters, eos_token_ids: set[int]) -> StoppingCriteria:
        return cls(params.max_new_tokens, eos_token_ids, params.stop_sequences, params.ignore_eos_token)

    def __call__(self, token_id: int, text_so_far_tail: str) -> tuple[bool, int | None]:
        """Account for one generated token; `text_so_far_tail` is the text that token added to the output
        (IncrementalDetokenizer.push's return). Returns (stop, finish reason or None)."""
        self.current_tokens += 1
        if self.current_tokens >= self.max_new_tokens:
            return True, pb.FINISH_REASON_LENGTH
        if not self.ignore_eos_token and token_id in self.eos_token_ids:
            return True, pb.FINISH_REASON_EOS_TOKEN
        if self.stop_sequences:
            self._window += text_so_far_tail
            if len(self._window) > _TRIM_FACTOR * self._keep:
                self._window = self._window[-self._keep :]
            if any(_ends_with(self._window, stop) for stop in self.stop_sequences):
                return True, pb.FINISH_REASON_STOP_SEQUENCE
        return False, None


def _ends_with(text: str, stop: str) -> bool:
    """TGI matches the regex `stop$`, and `$` also matches before a final newline: keep that behaviour."""
    return text.endswith(stop) or (text.endswith("\n") and text[:-1].endswith(stop))
