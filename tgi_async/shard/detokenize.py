"""Streaming detokenization with TGI's prefix/read offsets: each token's new text, never half a character.

Decoding a token alone loses what depends on its neighbours (a SentencePiece word-start space, the bytes of
a character split across byte-level tokens). So each step decodes a short window twice, the ids before the
new ones (`prefix`) and the window with them, and emits the difference once it grows and does not end in
U+FFFD (an incomplete UTF-8 sequence); otherwise the ids stay pending until a later token completes them.

Special tokens stay out of that window: each streams as its own text (flagged special, so clients leave it
out), and the bytes pending around one join as a decode that skips it joins them. The generated text is what
the non-special tokens streamed, so a client that joins them gets it exactly. (TGI decodes special tokens in
the window, so pending bytes can surface in a special token's text, "\ufffd<pad>", and leave the stream.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

REPLACEMENT_CHARACTER = "\ufffd"
# NOTE: TGI starts the window 5 prompt tokens back, so the first generated token is decoded in context.
PROMPT_CONTEXT = 5
# NOTE: a valid character spans at most 4 tokens; past this many pending ids the output is garbage bytes (or
# tokens that decode to nothing) and is flushed as is, so a stream of them cannot make each step O(n).
MAX_PENDING = 16


class IncrementalDetokenizer:
    """Turns one request's generated ids into text pieces as they come; cost per token ~ a few-id window."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], special_ids: Collection[int]):
        self.tokenizer = tokenizer
        self._decode = decoder(tokenizer)
        self._special_ids = special_ids
        context = [int(i) for i in prompt_ids[-PROMPT_CONTEXT:]]
        self._context = [i for i in context if i not in special_ids]
        self._generated: list[int] = []
        self._text_ids: list[int] = []  # the generated ids that are not special
        self._pieces: list[str] = []  # what the non-special tokens streamed
        # Offsets index the context followed by `_text_ids`.
        self._prefix_offset = 0
        self._read_offset = len(self._context)
        self._prefix_text: tuple[int, int, str] | None = None

    @property
    def generated_ids(self) -> list[int]:
        return self._generated

    def _window(self, start: int, stop: int | None = None) -> list[int]:
        """Ids `[start, stop)` of the context + non-special generated sequence."""
        context = len(self._context)
        stop = context + len(self._text_ids) if stop is None else stop
        head = self._context[start:stop] if start < context else []
        tail = self._text_ids[max(start - context, 0) : max(stop - context, 0)]
        return head + tail

    def push(self, token_id: int) -> str:
        """Append a generated token; returns its text: a special token's own, else the text it completes
        ("" while a character is incomplete)."""
        token_id = int(token_id)
        self._generated.append(token_id)
        if token_id in self._special_ids:
            return self._decode([token_id])
        self._text_ids.append(token_id)
        prefix_text = self._decode_prefix()
        new_text = self._decode(self._window(self._prefix_offset))
        total = len(self._context) + len(self._text_ids)
        complete = len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHARACTER)
        if not complete and total - self._read_offset < MAX_PENDING:
            return ""
        return self._emit(new_text, prefix_text, total)

    def finish(self) -> str:
        """The text still pending after the last token (its incomplete bytes as U+FFFD), to append to that
        token's text; "" when the last token is special, whose text holds nothing else (the pending bytes
        then stay out of the generated text too)."""
        total = len(self._context) + len(self._text_ids)
        if not self._generated or self._generated[-1] in self._special_ids or total == self._read_offset:
            return ""
        return self._emit(self._decode(self._window(self._prefix_offset)), self._decode_prefix(), total)

    def _emit(self, new_text: str, prefix_text: str, total: int) -> str:
        self._prefix_offset, self._read_offset = self._read_offset, total
        piece = new_text[len(prefix_text) :]
        self._pieces.append(piece)
        return piece

    def _decode_prefix(self) -> str:
        key = (self._prefix_offset, self._read_offset)
        if self._prefix_text is None or self._prefix_text[:2] != key:
            text = self._decode(self._window(*key))
            self._prefix_text = (*key, text)
        return self._prefix_text[2]

    def generated_text(self) -> str:
        """The whole generated text: the non-special tokens' streamed texts, joined.

        NOTE: TGI decodes the generated ids (special ones skipped) after the last prompt token instead. On a
        byte-level tokenizer that is the same text, but for U+FFFD where TGI's own stream disagrees with it:
        pending bytes shown in a special token's text, or flushed (MAX_PENDING) before a byte completed them,
        or left pending at the end (TGI's text is then "")."""
        return "".join(self._pieces)

    def token_text(self, token_id: int) -> str:
        """One token decoded alone, special tokens kept: the text of prefill and top-n tokens in TGI."""
        return token_texts(self.tokenizer, [token_id])[0]


def special_token_ids(tokenizer) -> frozenset[int]:
    """The ids TGI flags `special`: the tokenizer's special tokens and every added token marked special.

    NOTE: transformers' `all_special_ids` alone misses added special tokens that are not named in the
    tokenizer config (<|im_start|>, <|im_end|>), which TGI's shard adds from `added_tokens_decoder`."""
    added = (i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return frozenset(int(i) for i in (*tokenizer.all_special_ids, *added))


def decoder(tokenizer) -> Callable[[list[int]], str]:
    """`ids -> text`, equal to `tokenizer.decode(ids, skip_special_tokens=False)`.

    NOTE: when transformers would apply no clean-up, that is the Rust tokenizer's decode plus ~2 us of Python
    per call; called twice per generated token, a visible share of a CPU decode step. (Special tokens are
    kept: the detokenizer leaves them out of its windows itself, by `special_token_ids`.)
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
