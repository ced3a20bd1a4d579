"""Streaming detokenization with TGI's prefix/read offsets: each token's new text, never half a character.

Decoding a token alone loses what depends on its neighbours (a SentencePiece word-start space, the bytes of
a character split across byte-level tokens). So each step decodes a short window twice, the ids before the
new ones (`prefix`) and the window with them, and emits the difference once it grows and does not end in
U+FFFD (an incomplete UTF-8 sequence); otherwise the ids stay pending until a later token completes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"
# NOTE: TGI starts the window 5 prompt tokens back, so the first generated token is decoded in context.
PROMPT_CONTEXT = 5
# NOTE: a valid character spans at most 4 tokens; past this many pending ids the output is garbage bytes (or
# tokens that decode to nothing) and is flushed as is, so a stream of them cannot make each step O(n).
MAX_PENDING = 16


class IncrementalDetokenizer:
    """Turns one request's generated ids into text pieces as they come; cost per token ~ a few-id window."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self._decode = decoder(tokenizer)  # special tokens kept
        self._context = [int(i) for i in prompt_ids[-PROMPT_CONTEXT:]]
        self._generated: list[int] = []
        # Offsets index `self._ids()`: the prompt context followed by the generated ids.
        self._prefix_offset = 0
        self._read_offset = len(self._context)
        self._prefix_text: tuple[int, int, str] | None = None

    @property
    def generated_ids(self) -> list[int]:
        return self._generated

    def _window(self, start: int, stop: int | None = None) -> list[int]:
        """Ids `[start, stop)` of the context + generated sequence."""
        context = len(self._context)
        stop = context + len(self._generated) if stop is None else stop
        head = self._context[start:stop] if start < context else []
        tail = self._generated[max(start - context, 0) : max(stop - context, 0)]
        return head + tail

    def push(self, token_id: int) -> str:
        """Append a generated token; returns the text it completes ("" while a character is incomplete)."""
        self._generated.append(int(token_id))
        prefix_text = self._decode_prefix()
        new_text = self._decode(self._window(self._prefix_offset))
        total = len(self._context) + len(self._generated)
        complete = len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHARACTER)
        if not complete and total - self._read_offset < MAX_PENDING:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, total
        return new_text[len(prefix_text) :]

    def _decode_prefix(self) -> str:
        key = (self._prefix_offset, self._read_offset)
        if self._prefix_text is None or self._prefix_text[:2] != key:
            text = self._decode(self._window(*key))
            self._prefix_text = (*key, text)
        return self._prefix_text[2]

    def generated_text(self, skip_special_tokens: bool = True) -> str:
        """The whole generated text, as TGI's GeneratedText.text: the generated ids decoded after the last
        prompt token (for its word-start context), minus that token's own text."""
        last = self._context[-1:]
        decode = self.tokenizer.decode
        prefix = decode(last, skip_special_tokens=skip_special_tokens) if last else ""
        text = decode(last + self._generated, skip_special_tokens=skip_special_tokens)
        return text[len(prefix) :]

    def token_text(self, token_id: int) -> str:
        """One token decoded alone, special tokens kept: the text of prefill and top-n tokens in TGI."""
        return token_texts(self.tokenizer, [token_id])[0]


def decoder(tokenizer) -> Callable[[list[int]], str]:
    """`ids -> text`, equal to `tokenizer.decode(ids, skip_special_tokens=False)`.

    NOTE: when transformers would apply no clean-up, that is the Rust tokenizer's decode plus ~2 us of Python
    per call; called twice per generated token, a visible share of a CPU decode step. (Not for skipping
    special tokens: transformers and the Rust tokenizer disagree on which tokens are special.)
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    return lambda ids: backend.decode(ids, skip_special_tokens=False)


def token_texts(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Each id decoded alone (special tokens kept, no clean-up), as TGI's batch_decode of prefill ids."""
    return tokenizer.batch_decode(
        [[int(i)] for i in token_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
