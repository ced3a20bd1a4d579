"""The next-token chooser of a batch: TGI's HeterogeneousNextTokenChooser semantics, our own batched code.

Per row, in TGI's order: watermark, repetition penalty, frequency penalty, logit bias, the grammar's mask
(tgi_async/shard/grammar.py), then the warpers temperature, top-k, top-p, typical-p, so greedy and seeded
sampling both obey the grammar. A row samples when it asked for `do_sample` or enabled any warper (as TGI
does); it samples with its own `torch.Generator` seeded with its seed, so a seed reproduces the same tokens
whatever the batch around it. Other rows take the argmax. `logprobs` are the log-softmax of the processed
scores the choice was made from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple

import torch

from tgi_async.proto import pb
from tgi_async.shard import grammar as gr
from tgi_async.shard import logits_process as lp
from tgi_async.shard.token_counts import TokenCounts, batch_counts

DEFAULT_WATERMARK_GAMMA = 0.5
DEFAULT_WATERMARK_DELTA = 2.0


@dataclass(frozen=True, slots=True)
class RowParameters:
    """One request's validated chooser parameters (neutral values mean "off")."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False  # effective: the request's do_sample or any warper enabled
    seed: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    watermark: tuple[float, float] | None = None  # (gamma, delta) when watermarking
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    grammar: gr.GrammarSpec | None = None

    @property
    def has_warpers(self) -> bool:
        return self.temperature != 1.0 or self.top_k != 0 or self.top_p < 1.0 or self.typical_p < 1.0


@dataclass(frozen=True, slots=True)
class SampleOutput:
    next_ids: torch.Tensor  # [B] long: the chosen token of each row
    logprobs: torch.Tensor  # [B, V] float32: log-softmax of the processed scores the choice was made from


def watermark_settings() -> tuple[float, float]:
    """(gamma, delta) from WATERMARK_GAMMA / WATERMARK_DELTA, as TGI reads them (defaults 0.5 / 2.0)."""
    values = []
    for name, default in (
        ("WATERMARK_GAMMA", DEFAULT_WATERMARK_GAMMA),
        ("WATERMARK_DELTA", DEFAULT_WATERMARK_DELTA),
    ):
        raw = os.environ.get(name)
        try:
            value = default if raw is None else float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
        values.append(value)
    gamma, delta = values
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"WATERMARK_GAMMA must be in (0, 1), got {gamma}")
    if not math.isfinite(delta):
        raise ValueError(f"WATERMARK_DELTA must be finite, got {delta}")
    return gamma, delta


def _bias_token_id(key: str, tokenizer) -> int:
    """A logit_bias key: a decimal token id (as TGI and OpenAI send them) or a token string of the vocab."""
    if key.isdecimal():
        token_id = int(key)
    else:
        token_id = tokenizer.convert_tokens_to_ids(key)
        unknown = token_id is None or (token_id == tokenizer.unk_token_id and key != tokenizer.unk_token)
        if unknown:
            raise ValueError(f"logit_bias: unknown token {key!r}")
    if not 0 <= token_id < len(tokenizer):
        raise ValueError(f"logit_bias: token id {token_id} is outside the vocabulary (size {len(tokenizer)})")
    return token_id


def parse_logit_bias(biases: Mapping[str, float], tokenizer) -> tuple[tuple[int, float], ...]:
    """`{token: bias}` as sorted (token id, bias) pairs; biases of keys naming the same id add up."""
    total: dict[int, float] = {}
    for key, value in biases.items():
        token_id = _bias_token_id(key, tokenizer)
        total[token_id] = total.get(token_id, 0.0) + float(value)
    return tuple(sorted(total.items()))


def row_parameters(message: pb.NextTokenChooserParameters, tokenizer) -> RowParameters:
    """Validate one request's parameters; ValueError naming the field for what the shard cannot honor."""
    if message == pb.NextTokenChooserParameters():
        raise ValueError(
            "NextTokenChooserParameters is empty (all zeros): send complete parameters "
            "(greedy: temperature=1, top_p=1, typical_p=1, top_k=0, repetition_penalty=1)"
        )
    checks = (
        ("temperature", message.temperature, message.temperature > 0, "> 0"),
        ("top_p", message.top_p, 0 < message.top_p <= 1, "in (0, 1]"),
        ("typical_p", message.typical_p, 0 < message.typical_p <= 1, "in (0, 1]"),
        ("repetition_penalty", message.repetition_penalty, message.repetition_penalty > 0, "> 0"),
        ("frequency_penalty", message.frequency_penalty, True, "finite"),
    )
    for name, value, ok, expected in checks:
        if not (ok and math.isfinite(value)):
            raise ValueError(f"{name} must be {expected}, got {value}")
    row = RowParameters(
        temperature=message.temperature,
        top_k=message.top_k,
        top_p=message.top_p,
        typical_p=message.typical_p,
        seed=message.seed,
        repetition_penalty=message.repetition_penalty,
        frequency_penalty=message.frequency_penalty,
        watermark=watermark_settings() if message.watermark else None,
        # NOTE: generate.v3 as TGI 3.3 ships it has no logit_bias; read it where a build of the proto has one.
        logit_bias=parse_logit_bias(getattr(message, "logit_bias", {}), tokenizer),
        grammar=gr.grammar_spec(message),
    )
    return replace(row, do_sample=message.do_sample or row.has_warpers)


def _penalized(row: RowParameters) -> bool:
    return row.repetition_penalty != 1.0 or row.frequency_penalty != 0.0


class _Feature(NamedTuple):
    """A processor's rows and their parameter column."""

    rows: torch.Tensor | None  # [R] long: the rows it touches; None: every row
    values: torch.Tensor  # [R, 1]: each of those rows' parameter


class BatchSampler:
    """Chooses the next token of every row of a batch; rows keep their generators across filter/concatenate.

    NOTE: `filter` and `concatenate` hand the same per-request generators and token counts to the new
    sampler (shared, not copied), so a request's random stream and penalty state continue where they were,
    whichever of the samplers holding it is called.
    """

    def __init__(
        self,
        rows: Sequence[RowParameters],
        device: torch.device | str = "cpu",
        generators: Sequence[torch.Generator | None] | None = None,
        counts: Sequence[TokenCounts | None] | None = None,
        grammars: Sequence[gr.RowGrammar | None] | None = None,
    ):
        self.rows = tuple(rows)
        self.device = torch.device(device)
        if generators is None:
            generators = [self._new_generator(row.seed) if row.do_sample else None for row in self.rows]
        self.generators = list(generators)
        if len(self.generators) != len(self.rows):
            raise ValueError("one generator slot per row is required")
        if counts is None:
            counts = [TokenCounts() if _penalized(row) else None for row in self.rows]
        self.counts = list(counts)
        if len(self.counts) != len(self.rows):
            raise ValueError("one token-count slot per row is required")
        self.grammars = list(grammars) if grammars is not None else [None] * len(self.rows)
        if len(self.grammars) != len(self.rows):
            raise ValueError("one grammar slot per row is required")
        if any(
            row.grammar is not None and g is None for row, g in zip(self.rows, self.grammars, strict=True)
        ):
            raise ValueError("every row with a grammar needs its grammar state (see row_grammars)")
        self.seeds = [row.seed for row in self.rows]
        self.do_sample = [row.do_sample for row in self.rows]
        self._prepare()

    @classmethod
    def from_pb(
        cls, params: Sequence[pb.NextTokenChooserParameters], tokenizer, device: torch.device | str
    ) -> BatchSampler:
        """Validate every request first (ValueError, nothing built), then build the batch's sampler."""
        rows = [row_parameters(message, tokenizer) for message in params]
        return cls(rows, device, grammars=gr.row_grammars([row.grammar for row in rows], tokenizer))

    @classmethod
    def concatenate(cls, samplers: Sequence[BatchSampler]) -> BatchSampler:
        if not samplers:
            raise ValueError("concatenate needs at least one sampler")
        rows = [row for sampler in samplers for row in sampler.rows]
        generators = [g for sampler in samplers for g in sampler.generators]
        counts = [c for sampler in samplers for c in sampler.counts]
        grammars = [g for sampler in samplers for g in sampler.grammars]
        return cls(rows, samplers[0].device, generators, counts, grammars)

    def filter(self, indices: Sequence[int]) -> BatchSampler:
        """The sampler of the rows at `indices`, in that order."""
        indices = list(indices)
        return BatchSampler(
            [self.rows[i] for i in indices],
            self.device,
            [self.generators[i] for i in indices],
            [self.counts[i] for i in indices],
            [self.grammars[i] for i in indices],
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reads_history(self) -> bool:
        """Whether choosing a token reads the row's previous tokens on the host (penalties, watermark) or
        state that only a real token advances (a grammar: its next mask needs the token chosen).

        NOTE: the overlapped pipeline steps a batch before the host has its last token; a batch with such a
        row is stepped one forward at a time instead (so a grammar never advances by a dropped step).
        """
        return bool(self._penalty_rows or self._watermark_rows or self._grammar_rows)

    def _new_generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def _column(self, values: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device).unsqueeze(1)

    def _feature(self, values: Sequence[float], neutral: float, dtype=torch.float32) -> _Feature | None:
        """The rows whose value is not `neutral`, with their values; None when there are none."""
        chosen = [i for i, value in enumerate(values) if value != neutral]
        if not chosen:
            return None
        if len(chosen) == len(values):
            return _Feature(None, self._column(values, dtype))
        index = torch.tensor(chosen, dtype=torch.long, device=self.device)
        return _Feature(index, self._column([values[i] for i in chosen], dtype))

    def _prepare(self) -> None:
        rows = self.rows
        self._sample_rows = [i for i, row in enumerate(rows) if row.do_sample]
        self._penalty_rows = [i for i, row in enumerate(rows) if _penalized(row)]
        if any(self.counts[i] is None for i in self._penalty_rows):
            raise ValueError("every penalized row needs its token counts")
        # NOTE: both penalties run on every penalized row; a neutral value (1.0, 0.0) leaves it exactly as is.
        repetition = [rows[i].repetition_penalty for i in self._penalty_rows]
        frequency = [rows[i].frequency_penalty for i in self._penalty_rows]
        self._repetition = self._column(repetition) if any(v != 1.0 for v in repetition) else None
        self._frequency = self._column(frequency) if any(v != 0.0 for v in frequency) else None
        self._watermark_rows = [i for i, row in enumerate(rows) if row.watermark is not None]
        bias = [(i, token, value) for i, row in enumerate(rows) for token, value in row.logit_bias]
        self._bias = None
        if bias:
            bias_rows, cols, values = zip(*bias, strict=True)
            self._bias = (
                torch.tensor(bias_rows, dtype=torch.long, device=self.device),
                torch.tensor(cols, dtype=torch.long, device=self.device),
                torch.tensor(values, dtype=torch.float32, device=self.device),
            )
        max_k = max((r.top_k for r in rows), default=0)
        warpers = [
            (lp.temperature, self._feature([r.temperature for r in rows], 1.0)),
            (partial(lp.top_k, max_k=max_k), self._feature([r.top_k for r in rows], 0, torch.long)),
            (lp.top_p, self._feature([r.top_p for r in rows], 1.0)),
            (lp.typical_p, self._feature([r.typical_p for r in rows], 1.0)),
        ]
        self._warpers = [(warp, feature) for warp, feature in warpers if feature is not None]
        self._grammar_rows = [i for i, g in enumerate(self.grammars) if g is not None]
        self._grammar_index = torch.tensor(self._grammar_rows, dtype=torch.long, device=self.device)
        self._plain_greedy = not (
            self._sample_rows
            or self._penalty_rows
            or self._watermark_rows
            or self._bias is not None
            or self._grammar_rows
        )

    def start_grammar_masks(self) -> Future | None:
        """Start computing this step's grammar masks (None: no grammar rows); give the result to `__call__`.

        NOTE: the masks depend only on the tokens chosen so far, so they can be computed during the forward.
        """
        if not self._grammar_rows:
            return None
        return gr.start_masks([self.grammars[i] for i in self._grammar_rows])

    def __call__(
        self, logits: torch.Tensor, histories: Sequence[Sequence[int]], grammar_masks: Future | None = None
    ) -> SampleOutput:
        """Choose each row's next token from `logits[B, V]`; `histories`: prompt + generated ids per row;
        `grammar_masks`: from `start_grammar_masks` (computed here when not given). Grammar rows advance by
        the token chosen."""
        if logits.dim() != 2 or logits.shape[0] != len(self.rows):
            raise ValueError(f"logits must be [{len(self.rows)}, V], got {list(logits.shape)}")
        if len(histories) != len(self.rows):
            raise ValueError(f"expected {len(self.rows)} histories, got {len(histories)}")
        scores = logits.float()
        # NOTE: max(dim).indices, not argmax: the same first maximum, ~3x cheaper on CPU
        if self._plain_greedy:
            return SampleOutput(scores.max(dim=-1).indices, torch.log_softmax(scores, dim=-1))
        scores = self._process(scores, histories, grammar_masks)
        next_ids = scores.max(dim=-1).indices
        if self._sample_rows:
            next_ids[self._sample_rows] = self._sample(scores[self._sample_rows])
        if self._grammar_rows:
            chosen = next_ids.index_select(0, self._grammar_index).tolist()
            gr.advance([self.grammars[i] for i in self._grammar_rows], chosen)
        return SampleOutput(next_ids, torch.log_softmax(scores, dim=-1))

    def _process(
        self, scores: torch.Tensor, histories: Sequence[Sequence[int]], grammar_masks: Future | None
    ) -> torch.Tensor:
        # NOTE: a row without history has no previous token to seed its green list and is left as is.
        marked = [i for i in self._watermark_rows if len(histories[i]) > 0]
        if marked:
            settings = [self.rows[i].watermark for i in marked]
            previous = [int(histories[i][-1]) for i in marked]
            scores = lp.watermark(scores, marked, previous, settings)
        if self._penalty_rows:
            scores = self._penalize(scores, histories)
        if self._bias is not None:
            scores = lp.logit_bias(scores, *self._bias)
        if self._grammar_rows:
            grammars = [self.grammars[i] for i in self._grammar_rows]
            masks = grammar_masks.result() if grammar_masks is not None else gr.compute_masks(grammars)
            scores = gr.apply(scores, self._grammar_index, masks, grammars[0].compiler.eos_token_id)
        for warp, feature in self._warpers:
            if feature.rows is None:
                scores = warp(scores, feature.values)
            else:
                warped = warp(scores.index_select(0, feature.rows), feature.values)
                scores = scores.index_copy(0, feature.rows, warped)
        return scores

    def _penalize(self, scores: torch.Tensor, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        rows = self._penalty_rows
        counts, lengths = batch_counts(
            [self.counts[i] for i in rows], [histories[i] for i in rows], scores.shape[-1], scores.device
        )
        sub = scores[rows]
        if self._repetition is not None:
            sub = lp.repetition_penalty(sub, counts, self._repetition)
        if self._frequency is not None:
            sub = lp.frequency_penalty(sub, counts, lengths, self._frequency)
        return scores.index_copy(0, torch.tensor(rows, device=scores.device), sub)

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """Exponential race (argmax of p / Exp(1) noise), one generator per row, as TGI's Sampling."""
        probs = torch.softmax(scores, dim=-1)
        noise = torch.empty_like(probs)
        for j, i in enumerate(self._sample_rows):
            noise[j].exponential_(1, generator=self.generators[i])
        # NOTE: a zero draw would turn a filtered token's 0 / 0 into NaN, which argmax would pick.
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        return (probs / noise).argmax(dim=-1)


def top_n_tokens(logprobs: torch.Tensor, top_n: Sequence[int]) -> list[tuple[list[int], list[float]]]:
    """Each row's `top_n` most likely tokens (ids, logprobs), best first, as TGI's batch_top_tokens.

    NOTE: tokens tied with the n-th value are all returned, so a row may get more than n; tokens at -inf are
    never returned. A row asking for 0 gets ([], []).
    """
    batch, vocab_size = logprobs.shape
    if len(top_n) != batch:
        raise ValueError(f"expected {batch} top_n values, got {len(top_n)}")
    wanted = [min(int(n), vocab_size) for n in top_n]
    max_n = max(wanted, default=0)
    if max_n <= 0:
        return [([], []) for _ in range(batch)]
    n = torch.tensor(wanted, dtype=torch.long, device=logprobs.device).unsqueeze(1)
    best = torch.topk(logprobs, max_n, dim=-1).values
    nth = best.gather(1, (n - 1).clamp(min=0))
    nth = torch.where(nth == float("-inf"), torch.full_like(nth, torch.finfo(logprobs.dtype).min), nth)
    counts = ((logprobs >= nth).sum(dim=-1) * (n.squeeze(1) > 0)).tolist()
    k = max(counts)
    if k == 0:
        return [([], []) for _ in range(batch)]
    top = torch.topk(logprobs, k, dim=-1)
    ids, values = top.indices.tolist(), top.values.tolist()
    return [(ids[i][: counts[i]], values[i][: counts[i]]) for i in range(batch)]


__all__ = [
    "BatchSampler",
    "RowParameters",
    "SampleOutput",
    "parse_logit_bias",
    "row_parameters",
    "top_n_tokens",
    "watermark_settings",
]
