"""Grammars in validation: TGI v3.3.7's checks, messages and order, and the regex every shard receives."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.api.test_openai_protocol import WEATHER
from tgi_async.api.body import DATA_PREFIX, BodyRejection, parse_json
from tgi_async.api.config import ApiConfig
from tgi_async.api.openai_requests import ToolChoice
from tgi_async.api.protocol import GenerateParameters, GenerateRequest, Grammar
from tgi_async.api.tool_calls import tool_grammar
from tgi_async.api.validation import Validator
from tgi_async.scheduler.request import InferError

CONFIG = ApiConfig(model_id="tiny", max_input_tokens=64, max_total_tokens=128)
STRING = r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"'
# What outlines-core at TGI's pinned revision makes of the weather tool's schema (TGI sends it as REGEX).
WEATHER_CALL = r'\{[ ]?"_name"[ ]?:[ ]?"weather"[ ]?,[ ]?"city"[ ]?:[ ]?' + STRING + r"[ ]?\}"
NO_TOOL_CALL = r'\{[ ]?"_name"[ ]?:[ ]?"no_tool"[ ]?\}'


@pytest.fixture(scope="module")
def validator(tiny_tokenizer):
    v = Validator(tiny_tokenizer, CONFIG)
    yield v
    v.close()


@pytest.fixture(scope="module")
def disabled(tiny_tokenizer):
    v = Validator(tiny_tokenizer, dataclasses.replace(CONFIG, disable_grammar_support=True))
    yield v
    v.close()


async def sent(validator: Validator, grammar: dict, inputs: str = "Hello") -> tuple[str, str]:
    request = await validator.validate(inputs, GenerateParameters(grammar=Grammar(**grammar)))
    return request.sampling.grammar_type, request.sampling.grammar


async def error_of(validator: Validator, grammar: dict, inputs: str = "Hello") -> str:
    with pytest.raises(InferError) as info:
        await sent(validator, grammar, inputs)
    assert info.value.error_type == "validation"
    return info.value.message


async def test_tool_schemas_reach_the_shard_as_tgis_regex(validator):
    _, auto = tool_grammar([WEATHER], ToolChoice(kind="auto"))
    # TGI's regex but for `function`, which TGI leaves optional (`{}` matches there)
    expected = r'\{[ ]?"function"[ ]?:[ ]?(' + WEATHER_CALL + "|" + NO_TOOL_CALL + r")[ ]?\}"
    assert await sent(validator, auto.model_dump()) == ("regex", expected)
    _, required = tool_grammar([WEATHER], ToolChoice(kind="required"))
    expected = r'\{[ ]?"function"[ ]?:[ ]?(' + WEATHER_CALL + r")[ ]?\}"
    assert await sent(validator, required.model_dump()) == ("regex", expected)


async def test_json_grammars_compile_to_one_regex(validator):
    schema = {"properties": {"b": {"type": "integer"}, "a": {"type": "boolean"}}, "required": ["b", "a"]}
    expected = r'\{[ ]?"b"[ ]?:[ ]?(-)?(0|[1-9][0-9]*)[ ]?,[ ]?"a"[ ]?:[ ]?(true|false)[ ]?\}'
    assert await sent(validator, {"type": "json", "value": schema}) == ("regex", expected)
    assert await sent(validator, {"type": "json_object", "value": schema}) == ("regex", expected)
    # a JSON string holding the schema is the same grammar
    assert await sent(validator, {"type": "json", "value": json.dumps(schema)}) == ("regex", expected)
    config = {"name": "pair", "schema": schema}
    assert await sent(validator, {"type": "json_schema", "value": config}) == ("regex", expected)


async def test_regexes_pass_through(validator):
    assert await sent(validator, {"type": "regex", "value": r"(yes|no)\d{2}"}) == ("regex", r"(yes|no)\d{2}")
    no_grammar = await validator.validate("Hello", GenerateParameters())
    assert (no_grammar.sampling.grammar_type, no_grammar.sampling.grammar) == ("none", "")


@pytest.mark.parametrize(
    ("grammar", "message"),
    [
        (
            {"type": "json", "value": {"type": "foo", "properties": {}}},
            'grammar is not valid: "foo" is not valid under any of the schemas listed in the '
            "'anyOf' keyword",
        ),
        ({"type": "json", "value": {"properties": 5}}, 'grammar is not valid: 5 is not of type "object"'),
        (
            {"type": "json", "value": {"type": "object"}},
            "grammar is not valid: Grammar must have a 'properties' field",
        ),
        (
            {"type": "json_schema", "value": {"schema": {"type": "object"}}},
            "grammar is not valid: Grammar must have a 'properties' field",
        ),
        ({"type": "json", "value": 5}, "grammar is not supported"),
        ({"type": "json", "value": [1]}, "grammar is not supported"),
        (
            {"type": "json", "value": {"properties": {"a": {"type": "string", "format": "email"}}}},
            "cannot compile regex from schema: Format email is not supported by Outlines",
        ),
        (
            {"type": "json", "value": {"properties": {"a": {"$ref": "#/nope"}}}},
            "cannot compile regex from schema: Invalid reference path: nope",
        ),
    ],
)
async def test_invalid_grammars_answer_tgis_messages(validator, grammar, message):
    assert await error_of(validator, grammar) == message


async def test_a_regex_the_shards_cannot_compile_never_reaches_one(validator):
    assert (await error_of(validator, {"type": "regex", "value": "(a"})).startswith("grammar is not valid: ")


async def test_disabled_grammar_support_refuses_every_grammar(disabled):
    for grammar in ({"type": "regex", "value": "a"}, {"type": "json", "value": {"properties": {}}}):
        assert await error_of(disabled, grammar) == "grammar is not supported"


async def test_the_prompt_is_checked_before_the_grammar(validator, disabled):
    bad = {"type": "json", "value": {"type": "object"}}
    assert await error_of(validator, bad, inputs="") == "`inputs` cannot be empty"
    assert (await error_of(disabled, bad, inputs="word " * 5000)).startswith("`inputs` tokens + ")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"type": "regex", "value": 5},
            "parameters.grammar.value: invalid type: integer `5`, expected a string",
        ),
        ({"type": "json_schema", "value": {"name": "x"}}, "parameters.grammar.value: missing field `schema`"),
        (
            {"type": "json_schema", "value": 3},
            "parameters.grammar.value: invalid type: integer `3`, expected ",
        ),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "parameters.grammar: missing field `value`"),
    ],
)
def test_grammar_bodies_of_the_wrong_shape_are_refused_like_serde(body: dict, message: str) -> None:
    with pytest.raises(BodyRejection) as info:
        parse_json(json.dumps({"inputs": "a", "parameters": {"grammar": body}}).encode(), GenerateRequest)
    assert info.value.status == 422
    assert info.value.text.startswith(DATA_PREFIX + message)
