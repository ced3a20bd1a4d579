"""IncrementalDetokenizer on the tiny model's byte-level BPE: whole characters, text equal to decode()."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tgi_async.shard.detokenize import MAX_PENDING, PROMPT_CONTEXT, IncrementalDetokenizer, token_texts

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def byte_ids(tokenizer) -> dict[int, int]:
    """byte value -> id of the single-byte token (every byte has one in a byte-level BPE)."""
    return {b: tokenizer.convert_tokens_to_ids(char) for b, char in bytes_to_unicode().items()}


def as_bytes(text: str, byte_ids: dict[int, int]) -> list[int]:
    """`text` as one token per UTF-8 byte: every multi-byte character is split across tokens."""
    return [byte_ids[b] for b in text.encode("utf-8")]


def prompt(tokenizer) -> list[int]:
    return tokenizer.encode("The model said:")


def stream(tokenizer, ids: list[int], prompt_ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    return [detokenizer.push(token) for token in ids]


@pytest.mark.parametrize(
    "text", ["Hello world, how are you?", " café naïve", "日本語", "emoji 🙂!", "a🙂é日b"]
)
def test_whole_token_stream_equals_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids, prompt(tokenizer))
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT not in piece for piece in pieces)


@pytest.mark.parametrize("text", ["é", "日本語", "🙂", "x é y 日本語 z 🙂 w"])
def test_characters_split_across_byte_tokens_come_out_whole(tokenizer, byte_ids, text):
    ids = as_bytes(text, byte_ids)
    pieces = stream(tokenizer, ids, prompt(tokenizer))
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT not in piece for piece in pieces)
    # A character of n bytes yields "" for its first n - 1 bytes, then the whole character.
    if text == "🙂":
        assert pieces == ["", "", "", "🙂"]


def test_word_start_spaces_survive(tokenizer):
    ids = tokenizer.encode(" the cat sat on the mat", add_special_tokens=False)
    pieces = stream(tokenizer, ids, [tokenizer.bos_token_id])
    assert pieces[0].startswith(" ")
    assert "".join(pieces) == " the cat sat on the mat"


def test_special_tokens_stream_but_leave_the_generated_text(tokenizer):
    ids = [*tokenizer.encode(" done", add_special_tokens=False), tokenizer.eos_token_id]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in ids]
    assert pieces[-1] == tokenizer.eos_token
    assert detokenizer.generated_text() == " done"
    assert detokenizer.generated_text(skip_special_tokens=False) == " done" + tokenizer.eos_token


def test_generated_text_after_a_special_prompt_end(tokenizer, byte_ids):
    ids = as_bytes("日本語 ok", byte_ids)
    detokenizer = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id])
    for token in ids:
        detokenizer.push(token)
    assert detokenizer.generated_text() == "日本語 ok"
    assert detokenizer.generated_ids == ids


def test_empty_prompt(tokenizer):
    ids = tokenizer.encode("no prompt at all", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    assert "".join(detokenizer.push(t) for t in ids) == "no prompt at all"
    assert detokenizer.generated_text() == "no prompt at all"


def test_token_text_decodes_each_token_alone(tokenizer, byte_ids):
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    assert detokenizer.token_text(tokenizer.bos_token_id) == tokenizer.bos_token
    ids = tokenizer.encode("Hello café", add_special_tokens=True)
    assert token_texts(tokenizer, ids) == [tokenizer.decode([i]) for i in ids]
    assert token_texts(tokenizer, ids)[0] == tokenizer.bos_token
    # Half a character decodes alone to the replacement character, as in TGI's prefill tokens.
    assert detokenizer.token_text(byte_ids["é".encode()[0]]) == REPLACEMENT


class RecordingTokenizer:
    """Wraps a tokenizer and records the length of every id list it decodes."""

    def __init__(self, inner):
        self.inner = inner
        self.lengths: list[int] = []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.inner.decode(ids, **kwargs)


def test_each_push_decodes_a_small_window(tokenizer, byte_ids):
    recording = RecordingTokenizer(tokenizer)
    long_prompt = tokenizer.encode("word " * 500)
    ids = tokenizer.encode("some words " * 300, add_special_tokens=False) + as_bytes(
        "日本語🙂" * 20, byte_ids
    )
    detokenizer = IncrementalDetokenizer(recording, long_prompt)
    text = "".join(detokenizer.push(token) for token in ids)
    assert text == tokenizer.decode(ids)
    assert max(recording.lengths) <= PROMPT_CONTEXT + 4


def test_garbage_bytes_are_flushed_instead_of_piling_up(tokenizer, byte_ids):
    recording = RecordingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(recording, [tokenizer.bos_token_id])
    pieces = [detokenizer.push(byte_ids[0x80]) for _ in range(100)]
    # At most one flushed run before the pending one.
    assert max(recording.lengths) <= 2 * MAX_PENDING
    assert REPLACEMENT in "".join(pieces)
    word = tokenizer.encode(" ok", add_special_tokens=False)[0]
    assert detokenizer.push(word).endswith(tokenizer.decode([word]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=[REPLACEMENT]), max_size=40
    ),
    split_bytes=st.booleans(),
)
def test_round_trip_of_random_text(tokenizer, byte_ids, text, split_bytes):
    # NOTE: every added special token (all_special_tokens omits e.g. <|im_start|>): the text round trip
    # skips them
    specials = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    assume(not any(special in text for special in specials))
    ids = as_bytes(text, byte_ids) if split_bytes else tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in ids]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert detokenizer.generated_text() == text
