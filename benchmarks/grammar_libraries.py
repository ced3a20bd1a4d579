"""Constrained-decoding libraries compared: per-token mask cost at batch 1 and 64, compile cost, coverage.

    python -m benchmarks.grammar_libraries [--big-tokenizer DIR] [--libs llguidance,xgrammar,outlines-core]

Each library gets the same grammar and "samples" the same tokens: the tokenization of a document that the
grammar accepts, one copy per row, so every step's work is a real mask over a real grammar state. Timed per
step: computing the masks of all rows with the library's batch API (`mask`), and advancing every row by its
token (`advance`). Compile: grammar text -> first mask of a fresh matcher. Coverage: each JSON-schema case
must compile, accept a valid document token by token (ending in a state where EOS is allowed) and reject an
invalid one. Tokenizers: the tiny test model's (1024 ids) and a 32k byte-level BPE trained here on the local
Python sources (no real model's tokenizer is available offline; built once under /tmp and reused).
Run the candidates' libraries in a venv that has all three (they are not project dependencies).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.grammar_cases import COVERAGE_CASES, PERF_CASES
from benchmarks.shard_step import default_model

BIG_TOKENIZER = Path("/tmp/tgi_async_bench/tokenizer-32k")
BATCHES = (1, 64)


def build_big_tokenizer(directory: Path) -> Path:
    """A 32k byte-level BPE (the tiny model's special tokens) trained on the interpreter's own sources."""
    if (directory / "tokenizer.json").exists():
        return directory
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"), recursive=True))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def texts():
        total = 0
        for name in files:
            with open(name, encoding="utf-8", errors="ignore") as handle:
                text = handle.read()
            total += len(text)
            yield text
            if total > 40_000_000:
                return

    tokenizer.train_from_iterator(texts(), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    wrapped.save_pretrained(directory)
    return directory


class Candidate:
    """One library behind a uniform face: compile, new matcher, batch mask, advance, accepting."""

    name: str

    def compile(self, kind: str, text: str): ...
    def matcher(self, compiled): ...
    def masks(self, matchers: list, bitmask: torch.Tensor) -> None: ...
    def advance(self, matchers: list, tokens: list[int]) -> list[bool]: ...
    def allows_eos(self, matcher, bitmask: torch.Tensor) -> bool:
        self.masks([matcher], bitmask[:1])
        return bool((int(bitmask[0, self.eos // 32]) >> (self.eos % 32)) & 1)


class LLGuidance(Candidate):
    name = "llguidance"

    def __init__(self, tokenizer):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.lib, self.torch = llguidance, llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.executor = llguidance.LLExecutor()
        self.eos = tokenizer.eos_token_id

    def compile(self, kind, text):
        if kind == "json":
            grammar = self.lib.LLMatcher.grammar_from_json_schema(
                text, defaults={"whitespace_flexible": False}
            )
        else:
            grammar = self.lib.LLMatcher.grammar_from_regex(text)
        is_error, messages = self.lib.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise ValueError(messages[0])
        return grammar

    def matcher(self, compiled):
        matcher = self.lib.LLMatcher(self.tokenizer, compiled, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def masks(self, matchers, bitmask):
        if len(matchers) == 1:
            self.torch.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            self.torch.fill_next_token_bitmask_par(
                self.executor, [(m, row) for row, m in enumerate(matchers)], bitmask
            )

    def advance(self, matchers, tokens):
        return [m.consume_token(t) for m, t in zip(matchers, tokens, strict=True)]


class XGrammar(Candidate):
    name = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar

        self.lib = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher("auto")
        self.eos = tokenizer.eos_token_id

    def compile(self, kind, text):
        if kind == "json":
            return self.compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
        return self.compiler.compile_regex(text)

    def matcher(self, compiled):
        return self.lib.GrammarMatcher(compiled)

    def masks(self, matchers, bitmask):
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def advance(self, matchers, tokens):
        return [m.accept_token(t) for m, t in zip(matchers, tokens, strict=True)]


class OutlinesCore(Candidate):
    name = "outlines-core"

    def __init__(self, tokenizer):
        import outlines_core

        self.lib = outlines_core
        vocabulary: dict[bytes, list[int]] = {}
        special = set(tokenizer.all_special_ids)
        for token, token_id in tokenizer.get_vocab().items():
            if token_id not in special:
                raw = tokenizer.convert_tokens_to_string([token]).encode()
                vocabulary.setdefault(raw, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, vocabulary)
        self.eos = tokenizer.eos_token_id

    def compile(self, kind, text):
        regex = self.lib.json_schema.build_regex_from_schema(text) if kind == "json" else text
        return self.lib.Index(regex, self.vocabulary)

    def matcher(self, compiled):
        return self.lib.Guide(compiled)

    def masks(self, matchers, bitmask):
        # NOTE: no batch API: one call per row.
        width = bitmask.shape[1]
        for row, guide in enumerate(matchers):
            guide.write_mask_into(bitmask[row].data_ptr(), width, 4)

    def advance(self, matchers, tokens):
        ok = []
        for guide, token in zip(matchers, tokens, strict=True):
            try:
                guide.advance(token, return_tokens=False)
                ok.append(True)
            except ValueError:
                ok.append(False)
        return ok


CANDIDATES: dict[str, Callable] = {
    "llguidance": LLGuidance,
    "xgrammar": XGrammar,
    "outlines-core": OutlinesCore,
}


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def _p90_us(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))] * 1e6


def forced_decode(lib: Candidate, compiled, tokens: list[int], batch: int, vocab: int) -> dict:
    """Every row walks `tokens`, row i `i % (n // 2)` tokens ahead (rows in different states); per step: all
    rows' masks (timed), check, advance (timed)."""
    lead = [row % max(len(tokens) // 2, 1) for row in range(batch)]
    matchers = [lib.matcher(compiled) for _ in range(batch)]
    for matcher, ahead in zip(matchers, lead, strict=True):
        lib.advance([matcher] * ahead, tokens[:ahead])
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    mask_s, advance_s = [], []
    for step in range(len(tokens) - max(lead)):
        chosen = [tokens[step + ahead] for ahead in lead]
        start = time.perf_counter()
        lib.masks(matchers, bitmask)
        middle = time.perf_counter()
        ok = lib.advance(matchers, chosen)
        advance_s.append(time.perf_counter() - middle)
        mask_s.append(middle - start)
        refused = [t for row, t in enumerate(chosen) if not (int(bitmask[row, t // 32]) >> (t % 32)) & 1]
        if refused or not all(ok):
            raise AssertionError(f"{lib.name}: tokens {refused} of the document were refused")
    return {
        "steps": len(mask_s),
        "mask_us": round(_median_us(mask_s), 1),
        "mask_p90_us": round(_p90_us(mask_s), 1),
        "advance_us": round(_median_us(advance_s), 1),
    }


def compile_ms(lib: Candidate, kind: str, text: str, vocab: int) -> float:
    start = time.perf_counter()
    matcher = lib.matcher(lib.compile(kind, text))
    lib.masks([matcher], torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32))
    return (time.perf_counter() - start) * 1e3


def coverage(lib: Candidate, tokenizer) -> dict[str, str]:
    vocab = len(tokenizer)
    bitmask = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)
    result = {}
    for name, schema, valid, invalid in COVERAGE_CASES:
        try:
            compiled = lib.compile("json", json.dumps(schema))
        except Exception as exc:
            result[name] = f"compile error: {str(exc)[:60]}"
            continue
        verdicts = []
        for document, expected in [(d, True) for d in valid] + [(d, False) for d in invalid]:
            tokens = tokenizer.encode(json.dumps(document, separators=(",", ":")), add_special_tokens=False)
            matcher = lib.matcher(compiled)
            accepted = True
            for token in tokens:
                lib.masks([matcher], bitmask)
                if (
                    not (int(bitmask[0, token // 32]) >> (token % 32)) & 1
                    or not lib.advance([matcher], [token])[0]
                ):
                    accepted = False
                    break
            accepted = accepted and lib.allows_eos(matcher, bitmask)
            verdicts.append(accepted == expected)
        result[name] = "ok" if all(verdicts) else f"wrong on {verdicts.count(False)}/{len(verdicts)}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big-tokenizer", type=Path, default=BIG_TOKENIZER)
    parser.add_argument("--libs", default=",".join(CANDIDATES))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizers = {
        "tiny (1024)": AutoTokenizer.from_pretrained(default_model()),
        "bpe-32k": AutoTokenizer.from_pretrained(build_big_tokenizer(args.big_tokenizer)),
    }
    names = args.libs.split(",")
    rows = []
    for label, tokenizer in tokenizers.items():
        vocab = len(tokenizer)
        for name in names:
            start = time.perf_counter()
            lib = CANDIDATES[name](tokenizer)
            setup_ms = (time.perf_counter() - start) * 1e3
            for case, kind, text, document in PERF_CASES:
                tokens = tokenizer.encode(document, add_special_tokens=False)
                try:
                    compiled_ms = [compile_ms(lib, kind, text, vocab) for _ in range(3)]
                    compiled = lib.compile(kind, text)
                    forced_decode(lib, compiled, tokens, 64, vocab)  # warm caches
                    for batch in BATCHES:
                        timing = forced_decode(lib, compiled, tokens, batch, vocab)
                        rows.append((label, name, case, batch, len(tokens), setup_ms, compiled_ms, timing))
                except Exception as exc:
                    rows.append((label, name, case, 0, len(tokens), setup_ms, [], {"error": str(exc)[:80]}))
    print("| tokenizer | library | grammar | batch | mask / step | p90 | advance / step | compile (3 runs) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, name, case, batch, _, _, compiled_ms, timing in rows:
        if "error" in timing:
            print(f"| {label} | {name} | {case} | - | {timing['error']} | | | |")
            continue
        compiles = " / ".join(f"{ms:.1f}" for ms in compiled_ms)
        print(
            f"| {label} | {name} | {case} | {batch} | {timing['mask_us']:.0f} us"
            f" | {timing['mask_p90_us']:.0f} us | {timing['advance_us']:.0f} us | {compiles} ms |"
        )
    print()
    results = {
        name: coverage(CANDIDATES[name](tokenizers["tiny (1024)"]), tokenizers["tiny (1024)"])
        for name in names
    }
    print("| JSON-schema case | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for case, *_ in COVERAGE_CASES:
        print(f"| {case} | " + " | ".join(results[name][case] for name in names) + " |")


if __name__ == "__main__":
    main()
