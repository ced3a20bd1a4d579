"""Constrained decoding: TGI's `grammar` / `grammar_type` enforced with xgrammar (docs/grammar.md says why).

A request's grammar is compiled when its batch is built (cached: a repeated grammar is compiled once; the
distinct new ones of a batch compile in parallel) and becomes a matcher that lives as long as the request,
shared by every sampler holding its row, as its generator is. Before sampling, the sampler takes the masks
of its grammar rows (`start_masks`: computed on a worker thread, since xgrammar releases the GIL, so the
engine can start them before the forward and collect them after), applies them (`apply`), and feeds each
row its chosen token (`advance`). At the grammar's end the mask allows only EOS, as TGI's FSM does.

Grammar kinds, as TGI's shard reads them: an empty grammar is none; JSON is a JSON schema (TGI's own shard
would allow anything: its router sends JSON grammars as regexes); any other kind is a regex.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch
import xgrammar

from tgi_async.proto import pb

logger = logging.getLogger(__name__)

COMPILED_CACHE_SIZE = 32  # as TGI's lru_cache of compiled FSMs
COMPILE_THREADS = 4
# NOTE: xgrammar's worker threads for a batch's masks: a quarter of the cores (a 2-core machine: the grammar
# thread alone; there, more threads made decoding at batch 64 ~25 % slower: they compete with the forward).
MASK_THREADS = min(8, max(1, (os.cpu_count() or 1) // 4))
# NOTE: below this many grammar rows the masks cost microseconds: waking a thread for them costs more.
THREADED_MASK_ROWS = 16
_NEG_INF = float("-inf")
# _BITS[b, k]: bit k of byte b (bitmasks are little-endian int32 words: token i is bit i%32 of word i//32)
_BITS = (torch.arange(256, dtype=torch.int32)[:, None] >> torch.arange(8, dtype=torch.int32)) & 1 == 1


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A request's grammar as the router sent it."""

    kind: str  # "json" or "regex"
    text: str


def grammar_spec(message: pb.NextTokenChooserParameters) -> GrammarSpec | None:
    if not message.grammar:
        return None
    return GrammarSpec("json" if message.grammar_type == pb.GRAMMAR_TYPE_JSON else "regex", message.grammar)


def _tokenizer_info(tokenizer) -> xgrammar.TokenizerInfo:
    """xgrammar's view of the vocabulary, special tokens blanked so no grammar ever allows one as text
    (from_huggingface reads a byte-level vocabulary's `<s>`, `<pad>`... as literal text); EOS stops."""
    detected = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    vocab = [""] * len(tokenizer)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < len(vocab):
            vocab[token_id] = token
    special = set(tokenizer.all_special_ids)
    special.update(i for i, added in tokenizer.added_tokens_decoder.items() if added.special)
    for token_id in special:
        if token_id < len(vocab):
            vocab[token_id] = ""
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return xgrammar.TokenizerInfo(
        vocab,
        detected.vocab_type,
        vocab_size=len(tokenizer),
        stop_token_ids=stop,
        add_prefix_space=detected.add_prefix_space,
    )


class GrammarCompiler:
    """Grammar text -> xgrammar's compiled grammar, cached per (kind, text)."""

    def __init__(self, tokenizer) -> None:
        self.info = _tokenizer_info(tokenizer)
        self.vocab_size = self.info.vocab_size
        self.eos_token_id = tokenizer.eos_token_id
        self._compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        self._compiled: OrderedDict[GrammarSpec, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=COMPILE_THREADS, thread_name_prefix="grammar-compile")

    def prefetch(self, specs: Sequence[GrammarSpec]) -> None:
        """Start compiling the grammars not compiled yet (in parallel, off the caller's thread)."""
        for spec in specs:
            self._future(spec)

    def start(self, spec: GrammarSpec) -> RowGrammar:
        """A request's state at the grammar's start (waits for its compilation); ValueError naming what is
        wrong with an invalid grammar."""
        return RowGrammar(xgrammar.GrammarMatcher(self._future(spec).result()), self)

    def _future(self, spec: GrammarSpec) -> Future:
        with self._lock:
            future = self._compiled.get(spec)
            if future is not None:
                self._compiled.move_to_end(spec)
                return future
            # NOTE: a failed compilation stays cached too: the same text fails the same way.
            future = self._pool.submit(self._compile, spec)
            self._compiled[spec] = future
            while len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
            return future

    def _compile(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        try:
            if spec.kind == "json":
                return self._compiler.compile_grammar(_json_schema_grammar(spec.text))
            return self._compiler.compile_regex(spec.text)
        except Exception as exc:  # xgrammar raises RuntimeError, ValueError... for a bad grammar
            what = "JSON schema" if spec.kind == "json" else "regex"
            raise ValueError(f"invalid grammar ({what}): {_first_line(str(exc))}") from None


# NOTE: xgrammar 0.2.9 lets raw control characters into strings with a length bound (its other strings
# exclude them, as JSON requires): the same exclusion is added to that character class.
_LENGTH_BOUND_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\r\n]"


def _json_schema_grammar(schema: str) -> str:
    """The schema as xgrammar EBNF: at most one whitespace character between tokens (the `[ ]?` of TGI's
    schema regexes, and no room for a model to loop on whitespace), strings without control characters."""
    grammar = xgrammar.Grammar.from_json_schema(schema, any_whitespace=True, max_whitespace_cnt=1)
    return str(grammar).replace(_LENGTH_BOUND_CHAR, _JSON_STRING_CHAR)


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


@lru_cache(maxsize=4)
def compiler_for(tokenizer) -> GrammarCompiler:
    """The tokenizer's compiler (its vocabulary table costs ~0.3 s at 32k tokens: built once)."""
    return GrammarCompiler(tokenizer)


def compiler_or_none(tokenizer) -> GrammarCompiler | None:
    """The tokenizer's compiler, or None (logged) if xgrammar cannot read it: grammar requests then fail
    with the reason, others are served."""
    try:
        return compiler_for(tokenizer)
    except Exception:
        logger.warning("grammars unavailable for this tokenizer", exc_info=True)
        return None


@dataclass(slots=True)
class RowGrammar:
    """One request's grammar state (mutated as it generates; shared, never copied)."""

    matcher: xgrammar.GrammarMatcher
    compiler: GrammarCompiler


def row_grammars(specs: Sequence[GrammarSpec | None], tokenizer) -> list[RowGrammar | None]:
    """Each row's grammar state at its start (new grammars compiled in parallel, each distinct one once);
    RowError naming the first row whose grammar is invalid."""
    if all(spec is None for spec in specs):
        return [None] * len(specs)
    try:
        compiler = compiler_for(tokenizer)
    except Exception as exc:  # a tokenizer xgrammar cannot read (Warmup logged it)
        first = next(i for i, spec in enumerate(specs) if spec is not None)
        raise RowError(
            first, f"grammars are not supported with this tokenizer: {_first_line(str(exc))}"
        ) from None
    compiler.prefetch([spec for spec in specs if spec is not None])
    grammars: list[RowGrammar | None] = []
    for index, spec in enumerate(specs):
        try:
            grammars.append(None if spec is None else compiler.start(spec))
        except ValueError as exc:
            raise RowError(index, str(exc)) from None
    return grammars


class RowError(ValueError):
    """A row's grammar is invalid; `row`: its index in the batch."""

    def __init__(self, row: int, message: str):
        super().__init__(message)
        self.row = row


_mask_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
_batch_matcher: xgrammar.BatchGrammarMatcher | None = None
_fill_lock = threading.Lock()  # inline and threaded fills never share xgrammar's batch matcher at once


def compute_masks(grammars: Sequence[RowGrammar]) -> torch.Tensor:
    """[R, ceil(V/32)] int32 bitmask of what each grammar allows next (a finished grammar: EOS only)."""
    global _batch_matcher
    compiler = grammars[0].compiler
    bitmask = torch.zeros((len(grammars), (compiler.vocab_size + 31) // 32), dtype=torch.int32)
    live = [row for row, g in enumerate(grammars) if not g.matcher.is_terminated()]
    eos = compiler.eos_token_id
    for row in sorted(set(range(len(grammars))) - set(live)):
        if eos is not None:
            bitmask[row].view(torch.uint8)[eos // 8] = 1 << (eos % 8)
    with _fill_lock:
        if len(live) == 1:
            grammars[live[0]].matcher.fill_next_token_bitmask(bitmask, live[0])
        elif live:
            if _batch_matcher is None:
                _batch_matcher = xgrammar.BatchGrammarMatcher(MASK_THREADS)
            matchers = [grammars[r].matcher for r in live]
            _batch_matcher.batch_fill_next_token_bitmask(matchers, bitmask, live)
    return bitmask


def start_masks(grammars: Sequence[RowGrammar]) -> Future | None:
    """`compute_masks` on the grammar thread, to overlap with other work (take `.result()`); None when
    there are too few rows to be worth it (compute them when needed)."""
    if len(grammars) < THREADED_MASK_ROWS:
        return None
    return _mask_thread.submit(compute_masks, list(grammars))


def apply(
    scores: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor, eos_token_id: int | None
) -> torch.Tensor:
    """`scores` with -inf where the grammar of each of `rows` (row r of `bitmask` for rows[r]) forbids.

    Ids past the grammar's vocabulary (a padded model head) are forbidden. A row whose mask allows nothing
    gets EOS, so it ends rather than sampling from nothing.
    """
    device = scores.device
    allowed = _bits(device)[bitmask.to(device).view(torch.uint8).long()].view(bitmask.shape[0], -1)
    vocab_size = scores.shape[-1]
    if allowed.shape[1] < vocab_size:
        allowed = torch.nn.functional.pad(allowed, (0, vocab_size - allowed.shape[1]))
    allowed = allowed[:, :vocab_size]
    if eos_token_id is not None:
        allowed[:, eos_token_id] |= ~allowed.any(dim=-1)
    sub = scores.index_select(0, rows).masked_fill(~allowed, _NEG_INF)
    return scores.index_copy(0, rows, sub)


@lru_cache(maxsize=8)
def _bits(device: torch.device) -> torch.Tensor:
    return _BITS.to(device)


def advance(grammars: Sequence[RowGrammar], tokens: Sequence[int]) -> None:
    """Feed each grammar its row's chosen token. A finished grammar ignores what follows (the request
    ignores EOS, say); a refused token (only a forced EOS can be) leaves the matcher where it was."""
    for grammar, token in zip(grammars, tokens, strict=True):
        if grammar.matcher.is_terminated():
            continue
        if not grammar.matcher.accept_token(token):
            logger.warning("grammar refused token %d", token)


__all__ = [
    "GrammarCompiler",
    "GrammarSpec",
    "RowError",
    "RowGrammar",
    "advance",
    "apply",
    "compiler_for",
    "compiler_or_none",
    "compute_masks",
    "grammar_spec",
    "row_grammars",
    "start_masks",
]
