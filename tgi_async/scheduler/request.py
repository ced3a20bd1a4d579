"""The contract between the HTTP API and the schedulers: a validated request in, a stream of events out.

Plain data only (no asyncio, gRPC or torch). The API builds `GenerateRequest`s from HTTP bodies; a scheduler
turns each into `InferEvent`s, in order: at most one `PrefillEvent`, then `TokenEvent`s, then exactly one
`EndEvent`, or an `InferError` raised instead of the remaining events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["length", "eos_token", "stop_sequence"]
GrammarType = Literal["none", "json", "regex"]  # generate.v3 GrammarType
ErrorType = Literal[
    "validation",
    "generation",
    "overloaded",
    "incomplete_generation",
    # raised by the API layer only (TGI's other InferError kinds)
    "incomplete_generation_stream",
    "template_error",
    "missing_template_variable",
    "tool_error",
]


@dataclass(frozen=True, slots=True)
class SamplingParameters:
    """What the shard's next-token chooser needs (generate.v3 NextTokenChooserParameters)."""

    temperature: float = 1.0  # 1.0 = untouched logits
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    typical_p: float = 1.0  # 1.0 = off
    do_sample: bool = False  # False = greedy
    seed: int = 0  # per-request generator seed (the API draws one when the client gave none)
    repetition_penalty: float = 1.0  # 1.0 = off
    frequency_penalty: float = 0.0  # 0.0 = off
    watermark: bool = False
    # the output constraint, as the shard receives it (TGI's router compiles JSON schemas to a regex)
    grammar: str = ""  # "" = none
    grammar_type: GrammarType = "none"


@dataclass(frozen=True, slots=True)
class StoppingParameters:
    """When a request ends (generate.v3 StoppingCriteriaParameters)."""

    max_new_tokens: int
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A validated generation request, as the API hands it to a scheduler."""

    inputs: str  # prompt text as the shard will tokenize it (chat template already applied)
    input_length: int  # prompt tokens after truncation: what the prompt costs in KV and prefill budget
    sampling: SamplingParameters
    stopping: StoppingParameters
    truncate: int = 0  # keep the last N prompt tokens at the shard; 0 = no truncation
    add_special_tokens: bool = True
    prefill_logprobs: bool = False  # return the prompt's tokens with logprobs (decoder_input_details)
    top_n_tokens: int = 0  # alternatives returned per generated token
    input_ids: tuple[int, ...] = ()  # the prompt's token ids after truncation (the router's tokenizer)
    adapter_id: str | None = None  # LoRA adapter asked for, passed through to the shard

    @property
    def max_total_tokens(self) -> int:
        """The most KV slots this request can ever occupy."""
        return self.input_length + self.stopping.max_new_tokens


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    logprob: float  # NaN where the shard has none (e.g. the first prompt token)
    special: bool


@dataclass(frozen=True, slots=True)
class GeneratedText:
    text: str
    generated_tokens: int
    finish_reason: FinishReason
    seed: int | None  # the seed used when sampling, else None


@dataclass(frozen=True, slots=True)
class PrefillEvent:
    """The prompt's tokens with their logprobs; sent only when `prefill_logprobs` was asked."""

    tokens: tuple[Token, ...]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token that is not the last."""

    token: Token
    top_tokens: tuple[Token, ...] = ()


@dataclass(frozen=True, slots=True)
class EndEvent:
    """The last generated token and the request's outcome. Times are `time.monotonic()` seconds."""

    token: Token
    generated_text: GeneratedText
    queued_at: float  # when the scheduler accepted the request
    started_at: float  # when its first prefill was sent to the shard
    top_tokens: tuple[Token, ...] = ()


InferEvent = PrefillEvent | TokenEvent | EndEvent


@dataclass(eq=False)
class InferError(Exception):
    """A request-level failure, mapped by the API to TGI's status codes and `{"error", "error_type"}`."""

    message: str
    error_type: ErrorType = "generation"
    details: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message
