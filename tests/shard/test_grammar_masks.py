"""Grammar masks on logits, without a shard: padded model heads, dead ends, finished grammars."""

from __future__ import annotations

import json
from concurrent.futures import Future

import pytest
import torch
from transformers import AutoTokenizer

from tgi_async.shard import grammar as gr


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def allowed_ids(scores: torch.Tensor) -> set[int]:
    return set(torch.nonzero(scores > float("-inf")).flatten().tolist())


def test_masks_match_the_grammar_and_forbid_padded_ids(tokenizer):
    state = gr.row_grammars([gr.GrammarSpec("regex", "[0-9]{2}")], tokenizer)[0]
    digits = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    vocab = len(tokenizer) + 40  # a model head wider than the tokenizer
    scores = gr.apply(
        torch.zeros(2, vocab), torch.tensor([1]), gr.compute_masks([state]), tokenizer.eos_token_id
    )
    assert allowed_ids(scores[0]) == set(range(vocab))  # row 0 has no grammar: untouched
    assert digits <= allowed_ids(scores[1]) <= set(range(len(tokenizer)))
    assert all(tokenizer.decode([i]).isdigit() for i in allowed_ids(scores[1]))


def test_finished_grammar_allows_only_eos_and_ignores_what_follows(tokenizer):
    state = gr.row_grammars([gr.GrammarSpec("regex", "ab")], tokenizer)[0]
    gr.advance([state] * 2, tokenizer.encode("ab", add_special_tokens=False))
    scores = gr.apply(torch.zeros(1, len(tokenizer)), torch.tensor([0]), gr.compute_masks([state]), 2)
    assert allowed_ids(scores[0]) == {tokenizer.eos_token_id}
    gr.advance([state, state], [tokenizer.eos_token_id, tokenizer.eos_token_id])  # EOS again: ignored
    assert allowed_ids(
        gr.apply(torch.zeros(1, len(tokenizer)), torch.tensor([0]), gr.compute_masks([state]), 2)[0]
    ) == {2}


def test_a_mask_allowing_nothing_falls_back_to_eos(tokenizer):
    empty = torch.zeros(1, (len(tokenizer) + 31) // 32, dtype=torch.int32)
    scores = gr.apply(torch.zeros(1, len(tokenizer)), torch.tensor([0]), empty, tokenizer.eos_token_id)
    assert allowed_ids(scores[0]) == {tokenizer.eos_token_id}


def test_threaded_and_inline_masks_agree(tokenizer):
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    specs = [gr.GrammarSpec("json", schema)] * gr.THREADED_MASK_ROWS
    states = gr.row_grammars(specs, tokenizer)
    for i, state in enumerate(states):  # rows in different states
        gr.advance([state] * (i % 5), tokenizer.encode('{"a":1', add_special_tokens=False)[: i % 5])
    future = gr.start_masks(states)
    assert future is not None
    assert torch.equal(future.result(), gr.compute_masks(states))
    assert gr.start_masks(states[:1]) is None


def test_special_tokens_are_never_text(tokenizer):
    state = gr.row_grammars([gr.GrammarSpec("json", json.dumps({"type": "string"}))], tokenizer)[0]
    gr.advance([state], tokenizer.encode('"', add_special_tokens=False))
    allowed = allowed_ids(
        gr.apply(torch.zeros(1, len(tokenizer)), torch.tensor([0]), gr.compute_masks([state]), 2)[0]
    )
    assert not allowed & (set(tokenizer.all_special_ids) - {tokenizer.eos_token_id})
    assert tokenizer.eos_token_id not in allowed  # inside a string: not complete


def test_unreadable_tokenizer_fails_the_row_clearly(monkeypatch, tokenizer):
    def broken(_tokenizer):
        raise RuntimeError("no vocabulary")

    monkeypatch.setattr(gr, "compiler_for", broken)
    with pytest.raises(gr.RowError, match="not supported with this tokenizer: no vocabulary") as info:
        gr.row_grammars([None, gr.GrammarSpec("regex", "a")], tokenizer)
    assert info.value.row == 1


class _DoneAtOnce:
    """An executor whose futures are done before `submit` returns (a compilation that fails at once)."""

    def submit(self, fn, *args):
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future


@pytest.mark.timeout(30)
def test_a_compilation_failing_at_once_is_reported_and_cached(tokenizer, monkeypatch):
    compiler = gr.GrammarCompiler(tokenizer)
    monkeypatch.setattr(compiler, "_pool", _DoneAtOnce())
    for _ in range(2):  # again: from the cache
        with pytest.raises(ValueError, match=r"invalid grammar \(regex\)"):
            compiler.start(gr.GrammarSpec("regex", "[a-"))
    assert compiler.start(gr.GrammarSpec("regex", "a+")).matcher.accept_token(
        tokenizer.convert_tokens_to_ids("a")
    )
