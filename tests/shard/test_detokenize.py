"""IncrementalDetokenizer on the tiny model's byte-level BPE: whole characters, text equal to decode()."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tgi_async.shard.detokenize import (
    MAX_PENDING,
    PROMPT_CONTEXT,
    IncrementalDetokenizer,
    special_token_ids,
    token_texts,
)

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


def detokenizer_for(tokenizer, prompt_ids: list[int]) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, prompt_ids, special_token_ids(tokenizer))


def prompt(tokenizer) -> list[int]:
    return tokenizer.encode("The model said:")


def stream(tokenizer, ids: list[int], prompt_ids: list[int]) -> list[str]:
    detokenizer = detokenizer_for(tokenizer, prompt_ids)
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
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in ids]
    assert pieces[-1] == tokenizer.eos_token
    assert detokenizer.finish() == ""
    assert detokenizer.generated_text() == " done"


def test_generated_text_after_a_special_prompt_end(tokenizer, byte_ids):
    ids = as_bytes("日本語 ok", byte_ids)
    detokenizer = detokenizer_for(tokenizer, [tokenizer.bos_token_id])
    for token in ids:
        detokenizer.push(token)
    assert detokenizer.generated_text() == "日本語 ok"
    assert detokenizer.generated_ids == ids


def test_empty_prompt(tokenizer):
    ids = tokenizer.encode("no prompt at all", add_special_tokens=False)
    detokenizer = detokenizer_for(tokenizer, [])
    assert "".join(detokenizer.push(t) for t in ids) == "no prompt at all"
    assert detokenizer.generated_text() == "no prompt at all"


def test_token_text_decodes_each_token_alone(tokenizer, byte_ids):
    detokenizer = detokenizer_for(tokenizer, [])
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
    detokenizer = IncrementalDetokenizer(recording, long_prompt, special_token_ids(tokenizer))
    text = "".join(detokenizer.push(token) for token in ids)
    assert text == tokenizer.decode(ids)
    assert max(recording.lengths) <= PROMPT_CONTEXT + 4


def test_garbage_bytes_are_flushed_instead_of_piling_up(tokenizer, byte_ids):
    recording = RecordingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(recording, [tokenizer.bos_token_id], special_token_ids(tokenizer))
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
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in ids]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert detokenizer.generated_text() == text


def test_tgi_flags_every_added_special_token(tokenizer):
    # TGI's shard: `all_special_ids` plus the added tokens marked special (<|im_start|> is not named in the
    # tokenizer config, so all_special_ids misses it, but decoding with skip_special_tokens drops it).
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ("<|im_start|>", "<|im_end|>")]
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert special_token_ids(tokenizer) == {*tokenizer.all_special_ids, *ids}
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in [*tokenizer.encode(" hi", add_special_tokens=False), *ids]]
    assert pieces[-2:] == ["<|im_start|>", "<|im_end|>"]
    assert detokenizer.generated_text() == " hi"


def test_pending_bytes_never_enter_a_special_tokens_text(tokenizer, byte_ids):
    # A character split by a special token: the skip-special decode joins its bytes, and so does the stream.
    first, *rest = as_bytes("é", byte_ids)
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in [first, tokenizer.pad_token_id, *rest]]
    assert pieces == ["", tokenizer.pad_token, "é"]
    assert detokenizer.generated_text() == "é"


def test_bytes_pending_at_the_end_stream_with_the_last_token(tokenizer, byte_ids):
    ok = tokenizer.encode(" ok", add_special_tokens=False)
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in [*ok, byte_ids[0xE6]]]
    pieces[-1] += detokenizer.finish()
    assert "".join(pieces) == detokenizer.generated_text() == " ok" + REPLACEMENT


def test_bytes_pending_before_a_final_special_token_stay_out_of_both(tokenizer, byte_ids):
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [detokenizer.push(token) for token in [byte_ids[0xE6], tokenizer.eos_token_id]]
    assert pieces == ["", tokenizer.eos_token]
    assert detokenizer.finish() == ""
    assert detokenizer.generated_text() == ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_joined_stream_is_the_generated_text(tokenizer, byte_ids, data):
    # Any ids (bytes, specials, words, garbage runs past MAX_PENDING): the non-special pieces join to the
    # generated text, which is the skip-special decode wherever that decode is valid UTF-8.
    specials = sorted(special_token_ids(tokenizer))
    pool = st.one_of(
        st.sampled_from(sorted(byte_ids.values())), st.sampled_from(specials), st.integers(0, 1023)
    )
    ids = data.draw(st.lists(pool, max_size=3 * MAX_PENDING))
    detokenizer = detokenizer_for(tokenizer, prompt(tokenizer))
    pieces = [(detokenizer.push(token), token in specials) for token in ids]
    final = detokenizer.finish()
    joined = "".join(piece for piece, special in pieces if not special) + final
    assert joined == detokenizer.generated_text()
    assert all(
        piece == tokenizer.decode([token])
        for (piece, special), token in zip(pieces, ids, strict=True)
        if special
    )
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if REPLACEMENT not in decoded:
        assert joined == decoded
