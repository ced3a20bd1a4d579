"""Request validation with TGI's rules, order and messages (router/src/validation.rs).

Checks run in TGI's order, so a request with several problems gets the same first error. Tokenization of
all but short inputs runs in `validation_workers` processes (tokenizer_pool.py), so the event loop never
does work that grows with the input. Failures raise `InferError(message, "validation")`; the API adds
TGI's "Input validation error: " prefix.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tgi_async import metrics
from tgi_async.api.chat_template import ChatTemplate
from tgi_async.api.config import ApiConfig
from tgi_async.api.grammar import grammar_regex
from tgi_async.api.openai_requests import Message, Tool
from tgi_async.api.protocol import GenerateParameters
from tgi_async.api.tokenizer_pool import (
    Encoded,
    TokenizerPool,
    chat_tokens_json,
    encode,
    tokens_json,
)
from tgi_async.scheduler.request import GenerateRequest, InferError, SamplingParameters, StoppingParameters
from tgi_async.telemetry.http import traced

# Without an explicit max_new_tokens a request may fill the context, but is scheduled this many tokens at a
# time (TGI re-queues it with the text so far; see serving.InferStream).
DEFAULT_GENERATION_LENGTH = 1024
T = TypeVar("T")
_F32 = struct.Struct("<f")


def single(value: float) -> float:
    """`value` rounded to f32, as TGI holds sampling parameters."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def invalid(message: str) -> InferError:
    return InferError(message, "validation")


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    request: GenerateRequest  # what the scheduler gets
    max_total_new_tokens: int  # tokens the client may get in all (>= request.stopping.max_new_tokens)


def backend_tokenizer(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


# Chat requests with bodies up to this size are templated on the loop (~50 us for 4 kB).
INLINE_RENDER_BYTES = 16 * 1024
# NOTE: below this many characters encoding takes ~10-40 us on the loop, less than the hop to a worker
# process and back; a burst of short requests would otherwise queue behind each other's hops.
INLINE_ENCODE_CHARS = 256


class Validator:
    """Validates and tokenizes requests for one model."""

    def __init__(self, tokenizer: Any, config: ApiConfig):
        self.config = config
        self._tokenizer = backend_tokenizer(tokenizer)
        self._workers: TokenizerPool | None = None

    @property
    def workers(self) -> TokenizerPool:
        """The worker processes (started with the first input that needs them, or by `start()`)."""
        if self._workers is None:
            cfg = self.config
            self._workers = TokenizerPool(
                self._tokenizer, cfg.validation_workers, cfg.max_concurrent_requests
            )
        return self._workers

    async def start(self) -> None:
        await self.workers.start()

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()

    async def _tokenizer_job(
        self, size: int, inline: Callable[..., T], pooled: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """`inline(tokenizer, *args)` for short inputs, else `pooled(*args)` in a worker process."""
        try:
            if size <= INLINE_ENCODE_CHARS:
                return inline(self._tokenizer, *args)
            return await pooled(*args)
        except InferError:
            raise
        except Exception as exc:  # the tokenizer's own errors become a validation error, like TGI's
            raise invalid(f"tokenizer error {exc}") from exc

    async def encode(self, inputs: str, add_special_tokens: bool, truncate: int | None) -> Encoded:
        """The token count of `inputs` and the ids to schedule (None when over `max_input_tokens`)."""
        limit = self.config.max_input_tokens
        args = (inputs, add_special_tokens, truncate, limit)
        return await self._tokenizer_job(len(inputs), encode, self.workers.encode, *args)

    async def tokenize(self, inputs: str, add_special_tokens: bool = True) -> bytes:
        """/tokenize's body: each token with its text and UTF-8 byte offsets into `inputs`."""
        args = (inputs, add_special_tokens)
        return await self._tokenizer_job(len(inputs), tokens_json, self.workers.tokens_json, *args)

    async def chat_tokenize(self, templated_text: str) -> bytes:
        """/chat_tokenize's body for a templated prompt."""
        size = len(templated_text)
        return await self._tokenizer_job(
            size, chat_tokens_json, self.workers.chat_tokens_json, templated_text
        )

    async def render(
        self,
        template: ChatTemplate,
        messages: list[Message],
        tools: tuple[list[Tool], str] | None,
        body_size: int,
    ) -> str:
        """`template` applied, in a worker when the request body is large (a long template run)."""
        if body_size <= INLINE_RENDER_BYTES:
            return template.apply(messages, tools)
        return await self.workers.render(template, messages, tools)

    def validate_best_of(self, best_of: int) -> int:
        if self.config.max_best_of == 1 and best_of != 1:
            raise invalid("`best_of` != 1 is not allowed for this endpoint")
        if best_of > self.config.max_best_of:
            raise invalid(f"`best_of` must be > 0 and <= {self.config.max_best_of}. Given: {best_of}")
        return best_of

    async def validate(
        self, inputs: str, parameters: GenerateParameters, add_special_tokens: bool = True
    ) -> GenerateRequest:
        """The scheduler request for `inputs` + `parameters`, or `InferError(..., "validation")`."""
        return (await self.validate_full(inputs, parameters, add_special_tokens)).request

    @traced("validate")
    async def validate_full(
        self, inputs: str, parameters: GenerateParameters, add_special_tokens: bool = True
    ) -> ValidatedRequest:
        cfg, p = self.config, parameters
        best_of = 1 if p.best_of is None else p.best_of
        sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
        if best_of > 1 and not sampling:
            raise invalid("you must use sampling when `best_of` is > 1")
        # NOTE: beyond TGI, which lets an f32 infinity through to its shards: a value a shard would refuse
        # must never reach one, where it fails every request of its batch.
        for name in ("temperature", "repetition_penalty", "frequency_penalty", "top_p", "typical_p"):
            value = getattr(p, name)
            if value is not None and not math.isfinite(single(value)):
                raise invalid(f"`{name}` must be a finite number")
        temperature = 1.0 if p.temperature is None else single(p.temperature)
        if temperature <= 0.0:
            raise invalid("`temperature` must be strictly positive")
        repetition_penalty = 1.0 if p.repetition_penalty is None else single(p.repetition_penalty)
        if repetition_penalty <= 0.0:
            raise invalid("`repetition_penalty` must be strictly positive")
        frequency_penalty = 0.0 if p.frequency_penalty is None else single(p.frequency_penalty)
        if not -2.0 <= frequency_penalty <= 2.0:
            raise invalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_p = 1.0 if p.top_p is None else single(p.top_p)
        if p.top_p is not None and not 0.0 < top_p < 1.0:
            raise invalid("`top_p` must be > 0.0 and < 1.0")
        typical_p = 1.0 if p.typical_p is None else single(p.typical_p)
        if p.typical_p is not None and not 0.0 < typical_p < 1.0:
            raise invalid("`typical_p` must be > 0.0 and < 1.0")
        top_k = 0 if p.top_k is None else p.top_k
        if p.top_k is not None and top_k <= 0:
            raise invalid("`top_k` must be strictly positive")
        if p.max_new_tokens == 0:
            raise invalid("`max_new_tokens` must be strictly positive")
        if len(p.stop) > cfg.max_stop_sequences:
            raise invalid(
                f"`stop` supports up to {cfg.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
            )
        if p.seed is None:
            seed = random.getrandbits(64)
        elif best_of > 1:
            raise invalid("`seed` must not be set when `best_of` > 1")
        else:
            seed = p.seed
        top_n_tokens = 0 if p.top_n_tokens is None else p.top_n_tokens
        if top_n_tokens > cfg.max_top_n_tokens:
            raise invalid(f"`top_n_tokens` must be >= 0 and <= {cfg.max_top_n_tokens}. Given: {top_n_tokens}")
        if not inputs:
            raise invalid("`inputs` cannot be empty")
        if p.truncate is not None and (p.truncate == 0 or p.truncate > cfg.max_input_tokens):
            limit = cfg.max_input_tokens
            raise invalid(f"`truncate` must be strictly positive and less than {limit}. Given: {p.truncate}")

        encoded = await self.encode(inputs, add_special_tokens, p.truncate)
        input_length = encoded.length if p.truncate is None else min(encoded.length, p.truncate)
        if p.max_new_tokens is not None:
            max_total_new_tokens = p.max_new_tokens
        else:
            max_total_new_tokens = max(0, cfg.max_total_tokens - input_length)
        max_new_tokens = min(max_total_new_tokens, DEFAULT_GENERATION_LENGTH)
        if input_length + max_new_tokens > cfg.max_total_tokens:
            raise invalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {cfg.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if input_length > cfg.max_input_tokens:
            raise invalid(
                f"`inputs` must have less than {cfg.max_input_tokens} tokens. Given: {input_length}"
            )
        metrics.REQUEST_INPUT_LENGTH.observe(input_length)

        # NOTE: TGI checks the grammar after the prompt, so a request with both problems gets the prompt's.
        regex = "" if p.grammar is None else grammar_regex(p.grammar, cfg.disable_grammar_support)

        metrics.REQUEST_MAX_NEW_TOKENS.observe(max_new_tokens)
        request = GenerateRequest(
            inputs=inputs,
            input_length=input_length,
            sampling=SamplingParameters(
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                typical_p=typical_p,
                do_sample=p.do_sample,
                seed=seed,
                repetition_penalty=repetition_penalty,
                frequency_penalty=frequency_penalty,
                watermark=p.watermark,
                grammar=regex,
                grammar_type="none" if p.grammar is None else "regex",
            ),
            stopping=StoppingParameters(max_new_tokens=max_new_tokens, stop_sequences=tuple(p.stop)),
            truncate=cfg.max_input_tokens if p.truncate is None else p.truncate,
            add_special_tokens=add_special_tokens,
            prefill_logprobs=p.decoder_input_details,
            top_n_tokens=top_n_tokens,
            input_ids=encoded.ids or (),  # NOTE: None only past max_input_tokens, refused above
            adapter_id=p.adapter_id,
        )
        return ValidatedRequest(request, max_total_new_tokens)
