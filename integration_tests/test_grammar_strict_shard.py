"""Grammars reach the strict TGI-semantics shard as TGI v3.3.7's router sends them: real HTTP, real gRPC over
a Unix socket, the shard's log of each Prefill's NextTokenChooserParameters.grammar / grammar_type."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration_tests.test_strict_shard import start_stack
from tgi_async.launcher.processes import ChildProcess

STRING = r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"'
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_CALL = r'\{[ ]?"_name"[ ]?:[ ]?"weather"[ ]?,[ ]?"city"[ ]?:[ ]?' + STRING + r"[ ]?\}"
NO_TOOL_CALL = r'\{[ ]?"_name"[ ]?:[ ]?"no_tool"[ ]?\}'
PAIR = {"properties": {"b": {"type": "integer"}, "a": {"type": "boolean"}}, "required": ["b", "a"]}
PAIR_REGEX = r'\{[ ]?"b"[ ]?:[ ]?(-)?(0|[1-9][0-9]*)[ ]?,[ ]?"a"[ ]?:[ ]?(true|false)[ ]?\}'


@pytest.fixture(scope="module", params=["async", "sync"])
def stack(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[tuple[ChildProcess, str]]:
    shard, router, url = start_stack(tiny_model_dir, request.param)
    yield shard, url
    router.stop()
    assert shard.stop() == 0, shard.log_tail()


def received(shard: ChildProcess) -> list[tuple[str, str]]:
    """(GrammarType name, grammar) of every request the shard was sent with a grammar, in order."""
    found = re.findall(
        r"Prefill: request \d+ (GRAMMAR_TYPE_\w+) (\".*\")$", shard.log_tail(2000), re.MULTILINE
    )
    return [(kind, json.loads(grammar)) for kind, grammar in found]


def test_every_grammar_arrives_as_tgis_regex(stack: tuple[ChildProcess, str]) -> None:
    shard, url = stack
    before = len(received(shard))
    with httpx.Client(base_url=url, timeout=120) as client:
        for grammar in (
            {"type": "regex", "value": r"(yes|no)\d{2}"},
            {"type": "json", "value": PAIR},
            {"type": "json_object", "value": json.dumps(PAIR)},
            {"type": "json_schema", "value": {"name": "pair", "schema": PAIR}},
        ):
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "grammar": grammar}}
            assert client.post("/generate", json=body).status_code == 200
        chat = {"messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 4, "tools": [TOOL]}
        for choice in ("auto", "required", {"type": "function", "function": {"name": "weather"}}):
            response = client.post("/v1/chat/completions", json={**chat, "tool_choice": choice})
            # the strict shard's text is no tool call: TGI's answer to that
            assert response.status_code == 422, response.text
            assert response.json()["error"].startswith("Tool error: Failed to parse generated text: ")
        # `none` and no tools send no grammar
        assert client.post("/v1/chat/completions", json={**chat, "tool_choice": "none"}).status_code == 200
        plain = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
        assert client.post("/generate", json=plain).status_code == 200
    auto = r'\{[ ]?"function"[ ]?:[ ]?(' + WEATHER_CALL + "|" + NO_TOOL_CALL + r")[ ]?\}"
    one = r'\{[ ]?"function"[ ]?:[ ]?(' + WEATHER_CALL + r")[ ]?\}"
    assert received(shard)[before:] == [
        ("GRAMMAR_TYPE_REGEX", r"(yes|no)\d{2}"),
        ("GRAMMAR_TYPE_REGEX", PAIR_REGEX),
        ("GRAMMAR_TYPE_REGEX", PAIR_REGEX),
        ("GRAMMAR_TYPE_REGEX", PAIR_REGEX),
        ("GRAMMAR_TYPE_REGEX", auto),
        ("GRAMMAR_TYPE_REGEX", one),
        ("GRAMMAR_TYPE_REGEX", one),
    ]


def test_a_regex_no_shard_compiles_is_refused_before_it_costs_a_batch(
    stack: tuple[ChildProcess, str],
) -> None:
    shard, url = stack
    before = len(received(shard))
    body = {
        "inputs": "Hello",
        "parameters": {"max_new_tokens": 4, "grammar": {"type": "regex", "value": "(a"}},
    }
    response = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert response.status_code == 422
    assert response.json()["error"].startswith("Input validation error: grammar is not valid: ")
    assert len(received(shard)) == before
