"""Validator: TGI's rules, their order and messages, defaults and tokenization (no sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tgi_async import metrics
from tgi_async.api.config import ApiConfig
from tgi_async.api.protocol import (
    GenerateParameters,
    SimpleToken,
    TokenizeResponse,
    default_parameters,
    to_json,
)
from tgi_async.api.tokenizer_pool import token_spans, tokens_json
from tgi_async.api.validation import DEFAULT_GENERATION_LENGTH, INLINE_ENCODE_CHARS, Validator, single
from tgi_async.scheduler.request import InferError

CONFIG = ApiConfig(
    model_id="tiny", max_input_tokens=64, max_total_tokens=128, max_best_of=2, max_stop_sequences=4
)


@pytest.fixture(scope="module")
def validator(tiny_tokenizer):
    v = Validator(tiny_tokenizer, CONFIG)
    yield v
    v.close()


def params(**kwargs) -> GenerateParameters:
    return GenerateParameters(**kwargs)


async def error_of(validator: Validator, inputs: str = "Hello world", **kwargs) -> str:
    with pytest.raises(InferError) as info:
        await validator.validate(inputs, params(**kwargs))
    assert info.value.error_type == "validation"
    return info.value.message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"temperature": 0.0}, "`temperature` must be strictly positive"),
        ({"temperature": -1.0}, "`temperature` must be strictly positive"),
        ({"repetition_penalty": 0.0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"frequency_penalty": -2.01}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0.0}, "`top_p` must be > 0.0 and < 1.0"),
        # f32: 0.99999999 is 1.0 for TGI
        ({"top_p": 0.99999999}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"top_k": -3}, "`top_k` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 64. Given: 0"),
        ({"truncate": 65}, "`truncate` must be strictly positive and less than 64. Given: 65"),
        (
            {"max_new_tokens": 126},
            "`inputs` tokens + `max_new_tokens` must be <= 128. "
            "Given: 5 `inputs` tokens and 126 `max_new_tokens`",
        ),
    ],
)
async def test_rules_and_messages(validator, tiny_tokenizer, kwargs, message):
    assert len(tiny_tokenizer("Hello world").input_ids) == 5  # <s> H ell o ▁world: the messages count 5
    assert await error_of(validator, **kwargs) == message


async def test_empty_input(validator):
    assert await error_of(validator, "") == "`inputs` cannot be empty"


async def test_input_too_long(validator):
    # TGI checks the total before the input length; past max_total_tokens the default max_new_tokens is 0
    message = await error_of(validator, "word " * 140)
    assert message.startswith("`inputs` tokens + `max_new_tokens` must be <= 128. Given: ")
    assert message.endswith(" `inputs` tokens and 0 `max_new_tokens`")
    message = await error_of(validator, "word " * 70, max_new_tokens=1)
    assert message.startswith("`inputs` must have less than 64 tokens. Given: ")


async def test_first_failing_rule_wins_in_tgi_order(validator):
    # temperature is checked before top_p, top_k before max_new_tokens, everything before tokenization
    assert (
        await error_of(validator, "", temperature=0.0, top_p=2.0) == "`temperature` must be strictly positive"
    )
    assert await error_of(validator, "", top_k=0, max_new_tokens=0) == "`top_k` must be strictly positive"
    assert await error_of(validator, "", top_n_tokens=9) == "`top_n_tokens` must be >= 0 and <= 5. Given: 9"


async def test_defaults_fill_the_context_in_chunks(validator):
    request = await validator.validate("Hello world", params())
    assert request.input_length == 5
    assert request.stopping.max_new_tokens == CONFIG.max_total_tokens - 5
    full = await validator.validate_full("Hello", params())
    assert full.max_total_new_tokens == CONFIG.max_total_tokens - full.request.input_length
    big = Validator(None, ApiConfig(model_id="m", max_input_tokens=10, max_total_tokens=5000))
    big._tokenizer = validator._tokenizer
    chunked = await big.validate_full("Hello", params(max_new_tokens=3000))
    assert chunked.request.stopping.max_new_tokens == DEFAULT_GENERATION_LENGTH
    assert chunked.max_total_new_tokens == 3000
    big.close()


async def test_sampling_parameters_and_defaults(validator):
    request = await validator.validate(
        "Hello world",
        params(
            temperature=0.7,
            top_k=5,
            top_p=0.9,
            typical_p=0.95,
            repetition_penalty=1.1,
            frequency_penalty=0.3,
            do_sample=True,
            seed=42,
            watermark=True,
            stop=["x"],
            decoder_input_details=True,
            top_n_tokens=3,
            max_new_tokens=7,
            truncate=2,
        ),
    )
    s = request.sampling
    assert (s.temperature, s.top_p, s.typical_p) == (single(0.7), single(0.9), single(0.95))
    assert (s.top_k, s.do_sample, s.seed, s.watermark) == (5, True, 42, True)
    assert (s.repetition_penalty, s.frequency_penalty) == (single(1.1), single(0.3))
    assert request.stopping.stop_sequences == ("x",)
    assert request.stopping.max_new_tokens == 7
    assert (request.prefill_logprobs, request.top_n_tokens, request.truncate) == (True, 3, 2)
    assert request.input_length == 2 and len(request.input_ids) == 2  # truncated to the last 2 tokens
    greedy = await validator.validate("Hello world", params(max_new_tokens=1))
    g = greedy.sampling
    assert (g.temperature, g.top_k, g.top_p, g.typical_p, g.repetition_penalty) == (1.0, 0, 1.0, 1.0, 1.0)
    assert greedy.truncate == CONFIG.max_input_tokens  # TGI sends max_input_tokens when none was asked
    assert greedy.input_ids[0] == validator._tokenizer.token_to_id("<s>")


async def test_seed_is_drawn_when_absent(validator):
    seeds = {(await validator.validate("Hi", params(do_sample=True))).sampling.seed for _ in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 2**64 for s in seeds)


async def test_best_of_limits(validator):
    assert validator.validate_best_of(2) == 2
    with pytest.raises(InferError, match=r"`best_of` must be > 0 and <= 2. Given: 3"):
        validator.validate_best_of(3)
    single_best = Validator(
        None, ApiConfig(model_id="m", max_input_tokens=8, max_total_tokens=16, max_best_of=1)
    )
    with pytest.raises(InferError, match="`best_of` != 1 is not allowed for this endpoint"):
        single_best.validate_best_of(2)
    single_best.close()
    # best_of = 0 passes TGI's generate validation (only the stream route rejects it)
    assert (await validator.validate("Hi", params(best_of=0))).input_length > 0


async def test_special_tokens_flag(validator):
    with_bos = await validator.validate("Hello", params())
    without = await validator.validate("Hello", params(), add_special_tokens=False)
    assert with_bos.input_length == without.input_length + 1
    assert without.add_special_tokens is False


async def test_metrics_recorded_on_success(validator):
    before = metrics.REQUEST_INPUT_LENGTH._series.get(())
    count = before.count if before else 0
    await validator.validate("Hello", params(max_new_tokens=3))
    assert metrics.REQUEST_INPUT_LENGTH._series[()].count == count + 1


async def test_tokenize_reports_utf8_byte_offsets(validator):
    tokens = json.loads(await validator.tokenize("Hé café 日本"))
    assert tokens[0]["text"] == "" and (tokens[0]["start"], tokens[0]["stop"]) == (0, 0)  # BOS
    raw = "Hé café 日本".encode()
    for token in tokens[1:]:
        assert raw[token["start"] : token["stop"]].decode(errors="replace") == token["text"]
    assert tokens[-1]["stop"] == len(raw)


def test_token_spans_without_offsets():
    assert token_spans([5, 6], [], "ab") == [(5, "", 0, 0), (6, "", 0, 0)]


def test_tokens_json_is_what_serde_writes(validator):
    """The hand-written /tokenize body has pydantic's (serde's) bytes: escapes, raw UTF-8, field order."""
    text = 'a "quoted" \\ back\tslash\n\x01\x1f\x7f é 日本 😀 \u2028'
    encoding = validator._tokenizer.encode(text)
    spans = token_spans(encoding.ids, encoding.offsets, text)
    models = TokenizeResponse([SimpleToken(id=i, text=t, start=a, stop=b) for i, t, a, b in spans])
    assert tokens_json(validator._tokenizer, text, True) == to_json(models)


async def test_long_inputs_are_tokenized_in_worker_processes_with_the_same_answers(validator):
    text = "Hé café, the quick brown fox. " * 40  # past INLINE_ENCODE_CHARS: a worker process answers
    assert len(text) > INLINE_ENCODE_CHARS
    inline = tokens_json(validator._tokenizer, text, True)
    assert await validator.tokenize(text) == inline
    ids = [token["id"] for token in json.loads(inline)]
    request = await validator.validate(text, params(max_new_tokens=1, truncate=10))
    assert (request.input_length, list(request.input_ids)) == (10, ids[-10:])
    assert validator.workers._executor is not None  # it did run in the pool
    message = await error_of(validator, text * 20, max_new_tokens=1)
    given = len(ids) * 20 - 19  # one BOS
    assert message == (
        "`inputs` tokens + `max_new_tokens` must be <= 128. "
        f"Given: {given} `inputs` tokens and 1 `max_new_tokens`"
    )


async def test_worker_queue_is_bounded(tiny_tokenizer):
    """Past max_concurrent_requests queued jobs a request is refused (429) instead of held in memory."""
    config = ApiConfig(model_id="tiny", max_input_tokens=64, max_total_tokens=128, max_concurrent_requests=1)
    bounded = Validator(tiny_tokenizer, config)
    try:
        text = "x" * (INLINE_ENCODE_CHARS + 1)
        first, second = await asyncio.gather(
            bounded.tokenize(text), bounded.tokenize(text), return_exceptions=True
        )
        assert isinstance(first, bytes)
        assert isinstance(second, InferError) and second.error_type == "overloaded"
    finally:
        bounded.close()


def test_default_parameters_sample():
    # TGI: a request without `parameters` samples; `"parameters": {}` does not
    assert default_parameters().do_sample is True
    assert GenerateParameters().do_sample is False


async def test_large_chats_are_templated_in_a_worker_with_the_same_text_and_errors(validator, tiny_tokenizer):
    from tgi_async.api.chat_template import ChatTemplate, ChatTemplateError
    from tgi_async.api.openai_requests import ChatRequest
    from tgi_async.api.validation import INLINE_RENDER_BYTES

    template = ChatTemplate.from_tokenizer(tiny_tokenizer)
    chat = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hé " * 10_000}]})
    large = INLINE_RENDER_BYTES + 1
    assert await validator.render(template, chat.messages, None, large) == template.apply(chat.messages)
    raising = ChatTemplate("{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError) as inline:
        raising.apply(chat.messages)
    with pytest.raises(ChatTemplateError) as pooled:
        await validator.render(raising, chat.messages, None, large)
    assert (pooled.value.message, pooled.value.error_type) == (inline.value.message, inline.value.error_type)
