"""Request parsing (serde's strictness, axum's rejections) and response bytes (serde_json's output)."""

from __future__ import annotations

import json
import math

import pytest

from tests.api.tgi_shapes import INFO_KEYS
from tgi_async.api import protocol as p
from tgi_async.api.body import (
    DATA_PREFIX,
    SYNTAX_PREFIX,
    BodyRejection,
    is_json_content_type,
    parse_json,
)
from tgi_async.api.routes.invocations import target_path


def rejection(body: bytes | str, model=p.GenerateRequest) -> BodyRejection:
    with pytest.raises(BodyRejection) as info:
        parse_json(body.encode() if isinstance(body, str) else body, model)
    return info.value


def test_parameters_default_like_tgi():
    request = parse_json(b'{"inputs": "a"}', p.GenerateRequest)
    assert request.parameters.do_sample is True  # no `parameters` at all: TGI's default_parameters()
    request = parse_json(b'{"inputs": "a", "parameters": {}}', p.GenerateRequest)
    params = request.parameters
    assert params.do_sample is False and params.details is False and params.stop == []
    assert params.max_new_tokens is None and params.return_full_text is None and params.seed is None
    compat = parse_json(b'{"inputs": "a"}', p.CompatGenerateRequest)
    assert compat.stream is False


def test_clients_cannot_set_internal_fields():
    request = parse_json(b'{"inputs": "a", "add_special_tokens": false}', p.GenerateRequest)
    assert request.add_special_tokens is True
    assert p.GenerateRequest(inputs="a", add_special_tokens=False).add_special_tokens is False
    assert "add_special_tokens" not in p.GenerateRequest.model_json_schema()["properties"]


def test_unknown_fields_are_ignored_like_serde():
    assert (
        parse_json(b'{"inputs": "a", "model": "x", "parameters": {"foo": 1}}', p.GenerateRequest).inputs
        == "a"
    )


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ('{"inputs":', 400, SYNTAX_PREFIX + "EOF while parsing a value at line 1 column 10"),
        ("", 400, SYNTAX_PREFIX + "EOF while parsing a value at line 1 column 0"),
        ('{"inputs": "a"} x', 400, SYNTAX_PREFIX + "trailing characters at line 1 column 17"),
        ('{"inputs": "a", "parameters": {"temperature": NaN}}', 400, SYNTAX_PREFIX + "expected value"),
        ("{}", 422, DATA_PREFIX + "missing field `inputs`"),
        ("[1]", 422, DATA_PREFIX + "invalid type: sequence, expected struct GenerateRequest"),
        ('{"inputs": 1}', 422, DATA_PREFIX + "inputs: invalid type: integer `1`, expected a string"),
        (
            '{"inputs": "a", "parameters": null}',
            422,
            DATA_PREFIX + "parameters: invalid type: null, expected struct GenerateParameters",
        ),
        (
            '{"inputs": "a", "parameters": {"max_new_tokens": "5"}}',
            422,
            DATA_PREFIX + 'parameters.max_new_tokens: invalid type: string "5", expected u32',
        ),
        (
            '{"inputs": "a", "parameters": {"max_new_tokens": 1.5}}',
            422,
            DATA_PREFIX + "parameters.max_new_tokens: invalid type: floating point `1.5`, expected u32",
        ),
        (
            '{"inputs": "a", "parameters": {"max_new_tokens": -1}}',
            422,
            DATA_PREFIX + "parameters.max_new_tokens: invalid value: integer `-1`, expected u32",
        ),
        (
            '{"inputs": "a", "parameters": {"seed": -1}}',
            422,
            DATA_PREFIX + "parameters.seed: invalid value: integer `-1`, expected u64",
        ),
        (
            '{"inputs": "a", "parameters": {"details": 1}}',
            422,
            DATA_PREFIX + "parameters.details: invalid type: integer `1`, expected a boolean",
        ),
        (
            '{"inputs": "a", "parameters": {"stop": "x"}}',
            422,
            DATA_PREFIX + 'parameters.stop: invalid type: string "x", expected a sequence',
        ),
        (
            '{"inputs": "a", "parameters": {"stop": ["x", 2]}}',
            422,
            DATA_PREFIX + "parameters.stop[1]: invalid type: integer `2`, expected a string",
        ),
        (
            '{"inputs": "a", "parameters": {"temperature": "hot"}}',
            422,
            DATA_PREFIX + 'parameters.temperature: invalid type: string "hot", expected f32',
        ),
        (
            '{"inputs": "a", "parameters": {"grammar": {"type": "xml", "value": ""}}}',
            422,
            DATA_PREFIX + "parameters.grammar.type: unknown variant `xml`, "
            "expected one of `json`, `json_object`, `regex`, `json_schema`",
        ),
    ],
)
def test_body_rejections(body, status, text):
    error = rejection(body)
    assert (error.status, error.text) == (status, text)


def test_type_errors_win_over_missing_fields():
    # serde reports a bad value as it reads it, a missing field only at the end of the object
    error = rejection('{"parameters": {"top_k": "x"}}')
    assert error.text == DATA_PREFIX + 'parameters.top_k: invalid type: string "x", expected i32'


def test_floats_accept_integers_like_serde_f32():
    assert (
        parse_json(
            b'{"inputs": "a", "parameters": {"temperature": 1}}', p.GenerateRequest
        ).parameters.temperature
        == 1
    )


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/json;charset=utf-8", True),
        ("application/cloudevents+json", True),
        ("Application/JSON", True),
        ("text/json", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
    ],
)
def test_json_content_types_axum_accepts(value, ok):
    assert is_json_content_type(value) is ok


def test_f32_prints_like_serde():
    assert p.f32(-0.3400000035762787) == -0.34
    assert p.f32(float("nan")) is None and p.f32(float("inf")) is None and p.f32(None) is None
    assert p.f32(1e39) is None  # not representable as f32
    assert p.f32(-1.5e-05) == -1.5e-05


def token(logprob: float, special: bool = False) -> p.Token:
    return p.Token(id=7, text="é\n", logprob=p.f32(logprob), special=special)


def test_response_bytes_match_serde():
    details = p.Details(
        finish_reason="length",
        generated_tokens=1,
        seed=None,
        prefill=[p.PrefillToken(id=1, text="<s>", logprob=p.f32(math.nan))],
        tokens=[token(-0.3400000035762787)],
    )
    body = p.to_json(p.GenerateResponse(generated_text="x", details=details))
    # compact, raw UTF-8, NaN as null, empty top_tokens and absent best_of_sequences skipped, f32 digits
    assert body == (
        b'{"generated_text":"x","details":{"finish_reason":"length","generated_tokens":1,"seed":null,'
        b'"prefill":[{"id":1,"text":"<s>","logprob":null}],'
        b'"tokens":[{"id":7,"text":"\xc3\xa9\\n","logprob":-0.34,"special":false}]}}'
    )
    assert p.to_json(p.GenerateResponse(generated_text="x")) == b'{"generated_text":"x"}'


def test_stream_response_keeps_nulls_and_skips_empty_top_tokens():
    event = p.StreamResponse(index=1, token=token(-1.0))
    assert json.loads(p.to_json(event)) == {
        "index": 1,
        "token": {"id": 7, "text": "é\n", "logprob": -1.0, "special": False},
        "generated_text": None,
        "details": None,
    }
    last = p.StreamResponse(
        index=2,
        token=token(-1.0),
        top_tokens=[token(-2.0)],
        generated_text="ab",
        details=p.StreamDetails(finish_reason="eos_token", generated_tokens=2, seed=5, input_length=3),
    )
    assert list(json.loads(p.to_json(last))) == ["index", "token", "top_tokens", "generated_text", "details"]


def test_info_field_order_is_tgis():
    info = p.Info(
        model_id="m",
        max_concurrent_requests=1,
        max_best_of=2,
        max_stop_sequences=4,
        max_input_tokens=5,
        max_total_tokens=6,
        validation_workers=2,
        max_client_batch_size=4,
        router="text-generation-router",
        version="3.3.6-dev0",
    )
    assert list(json.loads(p.to_json(info))) == INFO_KEYS


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"inputs": "a"}', "/"),
        (b'{"inputs": "a", "stream": true, "parameters": {"max_new_tokens": 2}}', "/"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "/v1/chat/completions"),
        (b'{"prompt": "hi"}', "/v1/completions"),
        (b'{"inputs": 3}', None),
        (b'{"foo": 1}', None),
        (b"not json", "/"),  # the / route answers 400 with the parser's message
    ],
)
def test_invocations_dispatch(body, path):
    assert target_path("application/json", body) == path
    assert target_path("text/plain", body) == "/"  # the / route answers 415
