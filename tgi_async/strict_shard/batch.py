"""The strict shard's requests and batches, with the bookkeeping of TGI's FlashCausalLMBatch / CausalLMBatch.

What is kept is what a router can observe or corrupt: each request's prompt, how much of it is in the KV cache
(`cache_len`), the tokens it was given, where its KV goes (`slots`), and when it stopped. As in TGI, a stopped
request is not special: it keeps being computed, and keeps writing KV, until the router filters it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import interegular
from outlines_core.fsm.json_schema import build_regex_from_schema

from tgi_async.proto import pb
from tgi_async.strict_shard import tokens

LIVENESS_ID = (1 << 64) - 1  # TGI's health-check request: the only one allowed to write block 0


@dataclass(slots=True, eq=False)
class SimRequest:
    id: int
    prompt: list[int]  # token ids after truncation
    key: bytes  # what its token stream depends on (tokens.prompt_key of the prompt text)
    max_new_tokens: int
    ignore_eos: bool
    stop_sequences: tuple[str, ...]
    seed: int | None  # set when the request samples (reported in generated_text, as TGI)
    top_n_tokens: int
    prefill_logprobs: bool
    grammar: tuple[int, str]  # (GrammarType, grammar) as received
    slots: list[int] | None  # flash: the router's slots (one per KV position); padded: None
    blocks: list[int]
    cache_len: int  # KV positions computed: the cached prefix, then prompt chunks, then fed tokens
    chunk: int  # prompt tokens of its next forward while prefilling
    hashes: list[int] = field(default_factory=list)  # KV content hash per prompt position
    generated: list[int] = field(default_factory=list)  # the g-th entry is token g's id (after a stop too)
    text: str = ""  # generated text so far (what stop sequences are matched against)
    kv_hash: int = 0  # content hash of its last accepted KV position (the prompt's, then fed tokens')
    stopped: bool = False
    steps_after_stop: int = 0  # forwards that computed it after it stopped (the router had not filtered it)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def prefilling(self) -> bool:
        return self.cache_len < self.prompt_len

    @property
    def max_tokens(self) -> int:
        return len(self.slots) if self.slots is not None else self.prompt_len + self.max_new_tokens

    def next_input(self, speculate: int) -> int:
        """Tokens of its next forward: the pending chunk, else the fed token and its speculated ones."""
        return self.chunk if self.prefilling else 1 + speculate


def request_from_pb(
    message: pb.Request, prompt: list[int], text: str, slots: list[int] | None, chunk: int
) -> SimRequest:
    parameters, stopping = message.parameters, message.stopping_parameters
    samples = (
        parameters.do_sample
        or parameters.temperature != 1.0
        or parameters.top_k != 0
        or parameters.top_p < 1.0
        or parameters.typical_p < 1.0
    )
    return SimRequest(
        id=message.id,
        prompt=prompt,
        key=tokens.prompt_key(text),
        max_new_tokens=stopping.max_new_tokens,
        ignore_eos=stopping.ignore_eos_token,
        stop_sequences=tuple(stopping.stop_sequences),
        seed=parameters.seed if samples else None,
        top_n_tokens=message.top_n_tokens,
        prefill_logprobs=message.prefill_logprobs,
        grammar=checked_grammar(parameters),
        slots=slots,
        blocks=list(message.blocks),
        cache_len=message.cache_len,
        chunk=chunk,
        hashes=tokens.prefix_hashes(prompt),
        kv_hash=0,
    )


@dataclass(slots=True, eq=False)
class SimBatch:
    id: int
    requests: list[SimRequest]
    block_size: int
    padded: bool
    padded_max_tokens: int = 0  # CausalLM's own accounting (see `to_pb`)

    @property
    def max_input_length(self) -> int:
        return max(r.prompt_len for r in self.requests)

    def concatenate(self, other: SimBatch) -> None:
        """`other`'s requests join this batch (its id survives), with CausalLM's max_tokens arithmetic."""
        if self.padded:
            longest = max(self.max_input_length, other.max_input_length)
            self.padded_max_tokens = (
                self.padded_max_tokens
                + other.padded_max_tokens
                + (longest - self.max_input_length) * len(self)
                + (longest - other.max_input_length) * len(other)
            )
        self.requests.extend(other.requests)

    def __len__(self) -> int:
        return len(self.requests)

    def to_pb(self, speculate: int) -> pb.CachedBatch:
        """TGI's CachedBatch: max_tokens is the batch's blocks (flash) or its padded budget (CausalLM)."""
        if self.padded:
            max_tokens, current = self.padded_max_tokens, len(self)
        else:
            max_tokens = sum(len(r.blocks) for r in self.requests) * self.block_size
            current = sum(r.chunk if r.prefilling else 1 for r in self.requests)
        return pb.CachedBatch(
            id=self.id,
            request_ids=[r.id for r in self.requests],
            size=len(self),
            max_tokens=max_tokens,
            current_tokens=current,
        )

    def keep(self, request_ids: list[int]) -> list[SimRequest]:
        """TGI's filter: the rows of `request_ids`, in that order (as many ids as rows: unchanged, unread).
        Raises KeyError(id) for an unknown id, as TGI's requests_idx_mapping does."""
        if len(request_ids) == len(self.requests):
            return []
        by_id = {r.id: r for r in self.requests}
        kept = [by_id[i] for i in request_ids]  # KeyError: TGI's message is the bare id
        kept_ids = {r.id for r in kept}
        removed = [r for r in self.requests if r.id not in kept_ids]
        self.requests = kept
        if self.padded:  # CausalLM.filter: what the kept rows may still grow to
            self.padded_max_tokens = len(kept) * self.max_input_length + sum(
                r.max_new_tokens - len(r.generated) for r in kept
            )
        return removed


def checked_grammar(parameters: pb.NextTokenChooserParameters) -> tuple[int, str]:
    """(GrammarType, grammar) as received, once compiled as TGI's shards compile it (a non-empty grammar:
    JSON through outlines' schema-to-regex, then the regex to an automaton). A grammar that does not compile
    raises ValueError here, as there, and its whole batch is lost."""
    grammar, kind = parameters.grammar, parameters.grammar_type
    if grammar:
        try:
            regex = build_regex_from_schema(grammar) if kind == pb.GRAMMAR_TYPE_JSON else grammar
            interegular.parse_pattern(regex).to_fsm()
        except Exception as exc:  # outlines and interegular raise several types
            raise ValueError(f"grammar does not compile: {exc}") from None
    return kind, grammar
