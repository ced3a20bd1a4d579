"""Tool calling and structured output with real clients, unchanged (openai, huggingface_hub), through
`tgi-async launch` on the tiny random model: TGI's own shard (it applies grammars itself) and the bundled one.

Every answer is checked: tool calls' arguments parse and validate against the tool's schema, json outputs
against theirs, regex outputs match. The schemas' strings are enums: a random model closes a free string
only by chance (hundreds of tokens), and TGI's shard lets byte tokens break `maxLength` (it counts U+FFFD
replacement characters), which would test the model and the shard, not the router.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from huggingface_hub import InferenceClient
from openai import AsyncOpenAI

from integration_tests.conftest import launch, tgi_shard_available

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "hourly"],
}
ALARM = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["wake", "nap"]}, "snooze": {"type": "boolean"}},
    "required": ["label", "snooze"],
}
SCHEMAS = {"get_weather": WEATHER, "set_alarm": ALARM}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris? Use a tool."}]
MAX_TOKENS = 300  # far above what the bounded schemas need; an answer cut short would fail the test
REQUESTS = 200  # openai tool requests per stack: auto / required, streamed / not, 50 each
CONCURRENCY = 16
REGEX = r"(yes|no)-[0-9]{3}"


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("tgi", marks=pytest.mark.tgi_shard),
        pytest.param("bundled"),
    ],
)
def stack(request: pytest.FixtureRequest, tiny_model_dir: Path, tgi_model_dir: Path) -> Iterator[str]:
    if request.param == "tgi" and tgi_shard_available() is not None:
        pytest.skip(str(tgi_shard_available()))
    model = tgi_model_dir if request.param == "tgi" else tiny_model_dir
    child, url = launch(model, "--shard", request.param, "--max-concurrent-requests", "256")
    yield url
    assert child.stop(timeout=30) == 0, child.log_tail()


def valid_call(name: str, arguments: str) -> dict[str, Any]:
    assert name in SCHEMAS, name
    value = json.loads(arguments)
    jsonschema.validate(value, SCHEMAS[name])
    return value


async def openai_tool_request(client: AsyncOpenAI, choice: str, stream: bool) -> str:
    """One request; returns "tool" or "content" after checking the answer."""
    kwargs = {"model": "tgi", "messages": MESSAGES, "tools": TOOLS, "tool_choice": choice}
    if not stream:
        answer = await client.chat.completions.create(**kwargs, max_tokens=MAX_TOKENS)
        message = answer.choices[0].message
        if message.tool_calls:
            assert len(message.tool_calls) == 1 and message.content is None
            call = message.tool_calls[0]
            assert (call.id, call.type) == ("0", "function")
            valid_call(call.function.name, call.function.arguments)
            assert answer.choices[0].finish_reason == "stop"
            return "tool"
        assert choice == "auto" and isinstance(message.content, str)
        return "content"
    chunks = await client.chat.completions.create(**kwargs, max_tokens=MAX_TOKENS, stream=True)
    names, ids, arguments, content = [], set(), "", ""
    async for chunk in chunks:
        for choice_delta in chunk.choices:
            for call in choice_delta.delta.tool_calls or []:
                ids.add(call.id)
                names += [call.function.name] if call.function.name else []
                arguments += call.function.arguments or ""
            content += choice_delta.delta.content or ""
    if names:
        assert len(names) == 1 and ids == {"0"} and content == ""
        valid_call(names[0], arguments)
        return "tool"
    assert choice == "auto" and not arguments
    return "content"


async def test_openai_tools_auto_and_required_streamed_and_not(stack: str) -> None:
    async with AsyncOpenAI(base_url=f"{stack}/v1", api_key="-", max_retries=0, timeout=300) as client:
        kinds = [(choice, stream) for choice in ("auto", "required") for stream in (False, True)]
        jobs = [kinds[i % len(kinds)] for i in range(REQUESTS)]
        limit = asyncio.Semaphore(CONCURRENCY)

        async def run(choice: str, stream: bool) -> tuple[str, bool, str]:
            async with limit:
                return choice, stream, await openai_tool_request(client, choice, stream)

        outcomes = Counter(await asyncio.gather(*(run(*job) for job in jobs)))
        assert sum(outcomes.values()) == REQUESTS
        assert outcomes[("required", False, "tool")] == outcomes[("required", True, "tool")] == REQUESTS // 4
        # auto: the model may answer in text (TGI's no_tool); over 100 requests it also calls tools
        assert outcomes[("auto", False, "tool")] + outcomes[("auto", True, "tool")] > 0, outcomes


async def test_openai_named_tool_and_response_formats(stack: str) -> None:
    async with AsyncOpenAI(base_url=f"{stack}/v1", api_key="-", max_retries=0, timeout=300) as client:
        named = {"type": "function", "function": {"name": "set_alarm"}}
        for _ in range(5):
            answer = await client.chat.completions.create(
                model="tgi", messages=MESSAGES, tools=TOOLS, tool_choice=named, max_tokens=MAX_TOKENS
            )
            call = answer.choices[0].message.tool_calls[0]
            assert call.function.name == "set_alarm"
            valid_call("set_alarm", call.function.arguments)
        formats = [
            ({"type": "json_schema", "value": {"name": "weather", "schema": WEATHER}}, WEATHER),
            ({"type": "json_object", "value": ALARM}, ALARM),
            ({"type": "json", "value": json.dumps(WEATHER)}, WEATHER),
        ]
        for response_format, schema in formats * 5:
            answer = await client.chat.completions.create(
                model="tgi", messages=MESSAGES, response_format=response_format, max_tokens=MAX_TOKENS
            )
            jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
        for _ in range(5):
            regex = {"type": "regex", "value": REGEX}
            answer = await client.chat.completions.create(
                model="tgi", messages=MESSAGES, response_format=regex, max_tokens=20
            )
            assert re.fullmatch(REGEX, answer.choices[0].message.content)


def test_huggingface_hub_tools_and_grammars(stack: str) -> None:
    client = InferenceClient(base_url=stack, timeout=300)
    for _ in range(10):
        output = client.chat_completion(MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS)
        call = output.choices[0].message.tool_calls[0]
        arguments = call.function.arguments
        valid_call(call.function.name, arguments if isinstance(arguments, str) else json.dumps(arguments))
        names, streamed = [], ""
        for chunk in client.chat_completion(
            MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS, stream=True
        ):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                names += [call.function.name] if call.function.name else []
                streamed += call.function.arguments or ""
        assert len(names) == 1
        valid_call(names[0], streamed)
    # NOTE: POST / prepends the prompt for a text-generation model unless told not to, as TGI does
    for _ in range(10):
        text = client.text_generation(
            "The weather:",
            max_new_tokens=MAX_TOKENS,
            grammar={"type": "json", "value": WEATHER},
            return_full_text=False,
        )
        jsonschema.validate(json.loads(text), WEATHER)
        text = client.text_generation(
            "Yes or no?", max_new_tokens=20, grammar={"type": "regex", "value": REGEX}, return_full_text=False
        )
        assert re.fullmatch(REGEX, text), text
