"""BatchSampler: TGI's next-token chooser semantics, seeded reproducibility, per-row state across batches."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from tgi_async.proto import pb
from tgi_async.shard import logits_process as lp
from tgi_async.shard.sampling import (
    BatchSampler,
    RowParameters,
    parse_logit_bias,
    row_parameters,
    top_n_tokens,
)

VOCAB = 64


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def params(**overrides) -> pb.NextTokenChooserParameters:
    """Complete parameters as TGI's router sends them: greedy unless overridden."""
    fields = dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, seed=0)
    fields.update(overrides)
    return pb.NextTokenChooserParameters(**fields)


def random_logits(rows: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def from_probs(*probs: float, vocab: int = VOCAB) -> torch.Tensor:
    """One row of logits whose softmax puts `probs` on the first tokens and nothing on the rest."""
    logits = torch.full((1, vocab), -1e9)
    logits[0, : len(probs)] = torch.log(torch.tensor(probs))
    return logits


def run(sampler: BatchSampler, logits: torch.Tensor, steps: int) -> list[list[int]]:
    """Feed the same logits `steps` times; returns each row's chosen ids."""
    chosen = [[] for _ in range(logits.shape[0])]
    for _ in range(steps):
        out = sampler(logits, [[1]] * logits.shape[0])
        for row, token in enumerate(out.next_ids.tolist()):
            chosen[row].append(token)
    return chosen


def support(tokenizer, logits: torch.Tensor, seeds: range, **overrides) -> set[int]:
    """Every token chosen for a one-row batch across many seeds."""
    rows = [params(seed=seed, **overrides) for seed in seeds]
    sampler = BatchSampler.from_pb(rows, tokenizer, "cpu")
    return set(sampler(logits.expand(len(rows), -1), [[1]] * len(rows)).next_ids.tolist())


def test_greedy_is_argmax_with_log_softmax(tokenizer):
    logits = random_logits(8)
    sampler = BatchSampler.from_pb([params(seed=i) for i in range(8)], tokenizer, "cpu")
    out = sampler(logits, [[1, 2]] * 8)
    assert sampler.do_sample == [False] * 8
    assert torch.equal(out.next_ids, logits.argmax(-1))
    assert torch.allclose(out.logprobs, torch.log_softmax(logits, -1))
    assert out.next_ids.dtype == torch.long


@pytest.mark.parametrize(
    ("overrides", "samples"),
    [
        ({}, False),
        ({"do_sample": True}, True),
        ({"temperature": 0.5}, True),
        ({"top_k": 5}, True),
        ({"top_p": 0.9}, True),
        ({"typical_p": 0.9}, True),
        ({"repetition_penalty": 1.3, "frequency_penalty": 0.5, "watermark": True}, False),
    ],
)
def test_any_warper_turns_sampling_on_as_tgi(tokenizer, overrides, samples):
    sampler = BatchSampler.from_pb([params(seed=7, **overrides)], tokenizer, "cpu")
    assert sampler.do_sample == [samples]
    assert sampler.seeds == [7]


def test_seed_reproduces_whatever_the_batch(tokenizer):
    logits = random_logits(1, seed=1).expand(4, -1).contiguous() / 3  # flat enough to spread choices
    alone = run(BatchSampler.from_pb([params(do_sample=True, seed=42)], tokenizer, "cpu"), logits[:1], 30)[0]
    mixed = [
        params(),
        params(do_sample=True, seed=1),
        params(do_sample=True, seed=42),
        params(top_k=3, seed=9),
    ]
    in_batch = run(BatchSampler.from_pb(mixed, tokenizer, "cpu"), logits, 30)
    assert in_batch[2] == alone
    assert in_batch[1] != alone
    assert len(set(alone)) > 3


def test_sampling_follows_the_distribution(tokenizer):
    logits = from_probs(0.6, 0.3, 0.1)
    sampler = BatchSampler.from_pb([params(do_sample=True, seed=s) for s in range(3000)], tokenizer, "cpu")
    chosen = sampler(logits.expand(3000, -1), [[1]] * 3000).next_ids
    frequencies = torch.bincount(chosen, minlength=VOCAB)[:4].float() / 3000
    assert torch.allclose(frequencies, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.04)


def test_top_k_restricts_the_support(tokenizer):
    logits = random_logits(1, seed=3) / 4
    best = set(torch.topk(logits[0], 5).indices.tolist())
    chosen = support(tokenizer, logits, range(400), top_k=5)
    assert chosen == best
    out = BatchSampler.from_pb([params(top_k=5)], tokenizer, "cpu")(logits, [[1]])
    assert torch.isfinite(out.logprobs[0]).sum() == 5


def test_top_k_larger_than_the_vocabulary_keeps_everything(tokenizer):
    logits = random_logits(1)
    out = BatchSampler.from_pb([params(top_k=10 * VOCAB)], tokenizer, "cpu")(logits, [[1]])
    assert torch.allclose(out.logprobs, torch.log_softmax(logits, -1))


def test_top_p_restricts_the_support(tokenizer):
    # Ascending cumulative mass 0.08, 0.20, 0.50, 1.0: top_p 0.75 drops what stays <= 0.25.
    logits = from_probs(0.5, 0.3, 0.12, 0.08)
    assert support(tokenizer, logits, range(300), top_p=0.75) == {0, 1}
    assert support(tokenizer, logits, range(300), top_p=0.85) == {0, 1, 2}
    assert support(tokenizer, logits, range(300), top_p=0.01) == {0}


def test_tiny_top_p_still_keeps_the_most_likely_token(tokenizer):
    # 1 - 1e-9 rounds to 1.0 in float32: every cumulative mass is under it, yet the best token stays.
    logits = random_logits(1, seed=9)
    out = BatchSampler.from_pb([params(top_p=1e-9)], tokenizer, "cpu")(logits, [[1]])
    assert out.next_ids.tolist() == logits.argmax(-1).tolist()
    assert out.logprobs[0].max().item() == 0.0 and torch.isfinite(out.logprobs[0]).sum() == 1


def reference_typical(probs: list[float], mass: float) -> set[int]:
    """Typical-p by hand: order by |surprisal - entropy|, keep until the mass reaches `mass`."""
    entropy = -sum(p * math.log(p) for p in probs)
    order = sorted(range(len(probs)), key=lambda i: abs(-math.log(probs[i]) - entropy))
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total >= mass:
            break
    return kept


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.8, 0.9])
def test_typical_p_restricts_the_support(tokenizer, mass):
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    logits = torch.log(torch.tensor([probs]))
    out = BatchSampler.from_pb([params(typical_p=mass)], tokenizer, "cpu")(logits, [[1]])
    kept = set(torch.isfinite(out.logprobs[0]).nonzero().flatten().tolist())
    assert kept == reference_typical(probs, mass)
    rows = [params(typical_p=mass, seed=s) for s in range(200)]
    chosen = BatchSampler.from_pb(rows, tokenizer, "cpu")(logits.expand(200, -1), [[1]] * 200).next_ids
    assert set(chosen.tolist()) <= kept


def test_temperature_scales_the_logprobs(tokenizer):
    logits = random_logits(2)
    rows = [params(temperature=0.5), params(temperature=2.0)]
    out = BatchSampler.from_pb(rows, tokenizer, "cpu")(logits, [[1], [1]])
    expected = torch.log_softmax(logits / torch.tensor([[0.5], [2.0]]), -1)
    assert torch.allclose(out.logprobs, expected, atol=1e-5)


def test_repetition_penalty_as_ctrl(tokenizer):
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5]])
    out = BatchSampler.from_pb([params(repetition_penalty=2.0)], tokenizer, "cpu")(logits, [[0, 1, 1, 3]])
    # Seen tokens 0, 1, 3: positive scores halved, negative doubled; token 2 untouched.
    expected = torch.tensor([[1.0, -2.0, 0.5, 0.75]])
    assert torch.allclose(out.logprobs, torch.log_softmax(expected, -1))
    assert out.next_ids.tolist() == [0]


def test_frequency_penalty_subtracts_the_share_of_the_history(tokenizer):
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5]])
    out = BatchSampler.from_pb([params(frequency_penalty=0.6)], tokenizer, "cpu")(logits, [[0, 1, 1, 1, 3]])
    expected = torch.tensor([[2.0 - 0.6 / 5, -1.0 - 0.6 * 3 / 5, 0.5, 1.5 - 0.6 / 5]])
    assert torch.allclose(out.logprobs, torch.log_softmax(expected, -1), atol=1e-6)


def test_penalties_follow_growing_histories_incrementally(tokenizer):
    rows = [params(repetition_penalty=1.5, frequency_penalty=0.3, seed=1), params(frequency_penalty=-0.4)]
    sampler = BatchSampler.from_pb(rows, tokenizer, "cpu")
    histories = [[1, 2], [3]]
    logits = random_logits(2, seed=5)
    for step in range(6):
        out = sampler(logits, histories)
        fresh = BatchSampler.from_pb(rows, tokenizer, "cpu")(logits, histories)
        assert torch.allclose(out.logprobs, fresh.logprobs), step
        histories = [[*h, t] for h, t in zip(histories, out.next_ids.tolist(), strict=True)]


def test_watermark_adds_delta_to_the_green_list(tokenizer, monkeypatch):
    logits = torch.zeros(1, VOCAB)
    out = BatchSampler.from_pb([params(watermark=True)], tokenizer, "cpu")(logits, [[5, 9]])
    green = set(lp.watermark_greenlist(9, VOCAB, 0.5).tolist())
    boosted = set((out.logprobs[0] > out.logprobs[0].min() + 1.0).nonzero().flatten().tolist())
    assert boosted == green and len(green) == VOCAB // 2
    gap = out.logprobs[0, sorted(green)[0]] - out.logprobs[0].min()
    assert gap.item() == pytest.approx(2.0, abs=1e-5)
    assert lp.watermark_greenlist(10, VOCAB, 0.5).tolist() != lp.watermark_greenlist(9, VOCAB, 0.5).tolist()

    monkeypatch.setenv("WATERMARK_GAMMA", "0.25")
    monkeypatch.setenv("WATERMARK_DELTA", "5")
    out = BatchSampler.from_pb([params(watermark=True)], tokenizer, "cpu")(logits, [[5, 9]])
    top = out.logprobs[0].max()
    assert int((out.logprobs[0] == top).sum()) == VOCAB // 4
    assert (top - out.logprobs[0].min()).item() == pytest.approx(5.0, abs=1e-5)


def test_watermark_biases_what_is_sampled(tokenizer):
    logits = torch.zeros(400, VOCAB)
    rows = [params(watermark=True, do_sample=True, seed=s) for s in range(400)]
    chosen = BatchSampler.from_pb(rows, tokenizer, "cpu")(logits, [[7]] * 400).next_ids.tolist()
    green = set(lp.watermark_greenlist(7, VOCAB, 0.5).tolist())
    # With delta 2, a green token is e^2 times likelier: ~88% of draws land in the green half.
    assert sum(t in green for t in chosen) / 400 > 0.8


def test_logit_bias_shifts_scores(tokenizer):
    logits = torch.zeros(2, VOCAB)
    rows = [RowParameters(logit_bias=((7, 100.0), (3, -5.0))), RowParameters()]
    out = BatchSampler(rows)(logits, [[1], [1]])
    assert out.next_ids.tolist() == [7, 0]
    assert (out.logprobs[0, 0] - out.logprobs[0, 3]).item() == pytest.approx(5.0)
    assert torch.allclose(out.logprobs[1], torch.log_softmax(logits[1], -1))


def test_logit_bias_keys_are_ids_or_tokens(tokenizer):
    hello = tokenizer.convert_ids_to_tokens(377)
    assert parse_logit_bias({"377": 2, hello: 3, "5": -1}, tokenizer) == ((5, -1.0), (377, 5.0))
    with pytest.raises(ValueError, match="unknown token"):
        parse_logit_bias({"no-such-token-here": 1}, tokenizer)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        parse_logit_bias({str(len(tokenizer)): 1}, tokenizer)


def test_greedy_rows_are_independent_of_their_batch(tokenizer):
    logits = random_logits(3, seed=2)
    alone = BatchSampler.from_pb([params()], tokenizer, "cpu")(logits[1:2], [[1]])
    rows = [params(top_p=0.5, seed=1), params(), params(typical_p=0.3, temperature=0.7, seed=2)]
    mixed = BatchSampler.from_pb(rows, tokenizer, "cpu")(logits, [[1]] * 3)
    assert torch.equal(mixed.logprobs[1], alone.logprobs[0])
    assert mixed.next_ids[1] == alone.next_ids[0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"typical_p": 2.0}, "typical_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"frequency_penalty": float("inf")}, "frequency_penalty"),
        ({"grammar": "[a-z", "grammar_type": pb.GRAMMAR_TYPE_REGEX}, "invalid grammar"),
        ({"grammar": "{", "grammar_type": pb.GRAMMAR_TYPE_JSON}, "invalid grammar"),
    ],
)
def test_invalid_parameters_name_the_field(tokenizer, overrides, field):
    with pytest.raises(ValueError, match=field):
        BatchSampler.from_pb([params(), params(**overrides)], tokenizer, "cpu")


def test_all_zero_parameters_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="all zeros"):
        row_parameters(pb.NextTokenChooserParameters(), tokenizer)


def test_invalid_watermark_environment(tokenizer, monkeypatch):
    monkeypatch.setenv("WATERMARK_GAMMA", "1.5")
    with pytest.raises(ValueError, match="WATERMARK_GAMMA"):
        BatchSampler.from_pb([params(watermark=True)], tokenizer, "cpu")
    BatchSampler.from_pb([params()], tokenizer, "cpu")  # only read for watermarked requests


def test_filter_and_concatenate_continue_each_stream(tokenizer):
    logits = random_logits(1, seed=4) / 3
    rows = [params(do_sample=True, seed=s) for s in (11, 22, 33)]
    expected = {
        s: run(BatchSampler.from_pb([params(do_sample=True, seed=s)], tokenizer, "cpu"), logits, 12)[0]
        for s in (11, 22, 33)
    }

    sampler = BatchSampler.from_pb(rows, tokenizer, "cpu")
    first = run(sampler, logits.expand(3, -1), 4)
    sampler = sampler.filter([2, 0])
    assert sampler.seeds == [33, 11]
    second = run(sampler, logits.expand(2, -1), 4)
    other = BatchSampler.from_pb([params(), params(do_sample=True, seed=22)], tokenizer, "cpu").filter([1])
    sampler = BatchSampler.concatenate([sampler, other])
    assert sampler.seeds == [33, 11, 22] and sampler.do_sample == [True, True, True]
    third = run(sampler, logits.expand(3, -1), 4)

    assert first[2] + second[0] + third[0] == expected[33]
    assert first[0] + second[1] + third[1] == expected[11]
    assert third[2] == expected[22][:4]


def test_filter_and_concatenate_keep_penalty_state(tokenizer):
    logits = random_logits(3, seed=6)
    rows = [params(repetition_penalty=1.7), params(), params(frequency_penalty=0.9)]
    histories = [[1, 2, 3], [4], [5, 5, 6]]
    sampler = BatchSampler.from_pb(rows, tokenizer, "cpu")
    sampler(logits, histories)
    later = [histories[2] + [7], histories[0] + [8]]
    filtered = sampler.filter([2, 0])
    merged = BatchSampler.concatenate(
        [filtered, BatchSampler.from_pb([params(repetition_penalty=3.0)], tokenizer, "cpu")]
    )
    merged_histories = [*later, [9, 10]]
    out = merged(logits[[2, 0, 1]], merged_histories)
    fresh = BatchSampler.from_pb([rows[2], rows[0], params(repetition_penalty=3.0)], tokenizer, "cpu")
    assert torch.allclose(out.logprobs, fresh(logits[[2, 0, 1]], merged_histories).logprobs)


def test_rejects_mismatched_shapes(tokenizer):
    sampler = BatchSampler.from_pb([params(), params()], tokenizer, "cpu")
    with pytest.raises(ValueError, match="logits"):
        sampler(torch.zeros(3, VOCAB), [[1]] * 3)
    with pytest.raises(ValueError, match="histories"):
        sampler(torch.zeros(2, VOCAB), [[1]])


def test_top_n_tokens_best_first():
    logprobs = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, 2.0], [1.0, 0.0, 0.0, 0.0]]), -1)
    (ids, values), (none_ids, none_values) = top_n_tokens(logprobs, [2, 0])
    assert ids == [1, 3]
    assert values == pytest.approx(logprobs[0, [1, 3]].tolist())
    assert (none_ids, none_values) == ([], [])
    assert top_n_tokens(logprobs, [0, 0]) == [([], []), ([], [])]


def test_top_n_tokens_keeps_ties_at_the_nth_value():
    logprobs = torch.tensor([[-1.0, -2.0, -2.0, -3.0, -2.0], [-1.0, -2.0, -3.0, -4.0, -5.0]])
    (ids, values), (other_ids, _) = top_n_tokens(logprobs, [2, 2])
    assert ids[0] == 0 and sorted(ids[1:]) == [1, 2, 4]
    assert values == [-1.0, -2.0, -2.0, -2.0]
    assert other_ids == [0, 1]


def test_top_n_tokens_clips_to_the_vocabulary_and_skips_minus_infinity():
    logprobs = torch.tensor([[-1.0, float("-inf"), -2.0, float("-inf")]])
    assert top_n_tokens(logprobs, [10]) == [([0, 2], [-1.0, -2.0])]


def test_filtered_samplers_share_the_token_counts(tokenizer):
    rows = [params(repetition_penalty=1.5), params(frequency_penalty=0.5)]
    sampler = BatchSampler.from_pb(rows, tokenizer, "cpu")
    histories = [[1, 2, 3], [4, 4]]
    sampler.filter([1])(random_logits(1), [histories[1]])
    assert sampler.counts[1].seen == 2 and sampler.counts[0].seen == 0
    histories = [[1, 2, 3, 7], [4, 4, 9]]
    out = sampler(random_logits(2, seed=8), histories)
    fresh = BatchSampler.from_pb(rows, tokenizer, "cpu")(random_logits(2, seed=8), histories)
    assert torch.allclose(out.logprobs, fresh.logprobs)
