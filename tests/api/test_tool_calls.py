"""Tool-call answers read back as TGI v3.3.7 reads them (router/src/chat.rs), and their exact JSON bytes."""

from __future__ import annotations

import json

import pytest

from tgi_async.api.openai_requests import ChatRequest
from tgi_async.api.openai_responses import (
    ChatCompletionChoice,
    ChatCompletionComplete,
    DeltaFunction,
    DeltaToolCall,
    ToolCallDelta,
    ToolCallMessage,
)
from tgi_async.api.protocol import to_json
from tgi_async.api.tool_calls import NO_TOOL, StreamDelta, ToolCallStream, next_tool_call_id, parse_output
from tgi_async.scheduler.request import InferError

# TGI's own test stream (chat.rs `test_chat_stream_tool_get_weather`)
WEATHER_TOKENS = [
    '{"', "function", '":', ' {"', "_", "name", '":', ' "', "get", "_current", "_weather", '",',
    ' "', "location", '":', ' "', "San", " Francisco", ",", " CA", '",', ' "', "format", '":', ' "', "c",
    "elsius", '"}}',
]  # fmt: skip


def test_a_whole_answer_is_one_tool_call_with_compact_arguments() -> None:
    calls = parse_output('{"function": {"_name": "weather", "city": "Paris", "days": 3}}')
    assert calls is not None
    body = to_json(ToolCallMessage(tool_calls=calls))
    assert body == (
        b'{"role":"assistant","tool_calls":[{"id":"0","type":"function","function":{"description":null,'
        b'"name":"weather","arguments":"{\\"city\\":\\"Paris\\",\\"days\\":3}"}}]}'
    )
    assert parse_output('{"function": {"_name": "no_tool"}}') is None
    # no arguments at all: an empty object
    assert parse_output('{"function":{"_name":"ping"}}')[0].function.arguments == "{}"


@pytest.mark.parametrize("text", ["{}", '{"function": {}}', '{"function": {"_name": 1}}', "{", "nope", "[]"])
def test_an_answer_without_a_call_is_a_tool_error(text: str) -> None:
    with pytest.raises(InferError) as info:
        parse_output(text)
    assert info.value.error_type == "tool_error"
    assert info.value.message.startswith("Failed to parse generated text: ")


def test_tool_call_ids_count_up_from_the_conversation() -> None:
    def chat(*ids: str) -> ChatRequest:
        calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": {}}} for i in ids]
        messages = [{"role": "user", "content": "hi"}] + (
            [{"role": "assistant", "tool_calls": calls}] if ids else []
        )
        return ChatRequest.model_validate({"messages": messages})

    assert next_tool_call_id(chat().messages) == "0"
    assert next_tool_call_id(chat("0", "4", "2").messages) == "5"
    assert len(next_tool_call_id(chat("call_abc").messages)) == 36  # a UUID


def test_streamed_call_follows_tgis_chat_state() -> None:
    stream = ToolCallStream()
    deltas = [stream.push(text, special=False) for text in WEATHER_TOKENS]
    assert deltas[:11] == [[]] * 11  # buffered until the name is read
    assert deltas[11] == [StreamDelta("tool", "{", name="get_current_weather")]
    arguments = "".join(d[0].text for d in deltas[11:])
    assert all(d[0].name is None for d in deltas[12:])
    # TGI's expected output, byte for byte
    assert arguments == '{ "location": "San Francisco, CA", "format": "celsius"}'
    # what follows the call (EOS) is not sent
    assert stream.push("</s>", special=True) == []


def test_streamed_no_tool_is_detected_once_the_name_is_read() -> None:
    stream = ToolCallStream()
    tokens = ['{"', "function", '":', ' {"', "_", "name", '":', ' "', "no", "_tool", '"', "}}"]
    assert [stream.push(t, special=False) for t in tokens[:10]] == [[]] * 10
    assert stream.push(tokens[10], special=False) == NO_TOOL


def test_tool_deltas_serialize_like_tgi() -> None:
    call = DeltaToolCall(id="0", function=DeltaFunction(name="weather", arguments="{"))
    choice = ChatCompletionChoice(delta=ToolCallDelta(tool_calls=[call]), logprobs=None, finish_reason=None)
    assert to_json(choice) == (
        b'{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"0","type":"function",'
        b'"function":{"name":"weather","arguments":"{"}}]},"logprobs":null,"finish_reason":null}'
    )
    complete = ChatCompletionComplete(
        message=ToolCallMessage(tool_calls=parse_output('{"function":{"_name":"f"}}')),
        logprobs=None,
        finish_reason="stop",
    )
    assert to_json(complete).startswith(b'{"index":0,"message":{"role":"assistant","tool_calls":[{"id":"0"')


@pytest.mark.parametrize(
    "tokens",
    [
        # the name's closing quote, space and comma as separate tokens (TGI would send `{ ,"city"...`)
        ['{"function": {"_name": "weather', '"', " ", ",", ' "city"', ":", ' "Paris"', "}", " }"],
        ['{"function":{"_name":"weather"', ',"city":"Paris"}}'],
        ['{"function":{"_name":"ping"', "}", "}"],
        ['{"function":{"_name":"ping"}}'],
        ['{ "function" : { "_name" : "ping" ', "} ", "}"],
    ],
)
def test_streamed_arguments_always_add_up_to_their_json_object(tokens: list[str]) -> None:
    stream = ToolCallStream()
    deltas = [d for token in tokens for d in stream.push(token, special=False)]
    assert [d.name for d in deltas if d.name] in (["weather"], ["ping"])
    arguments = json.loads("".join(d.text for d in deltas))
    expected = {"city": "Paris"} if deltas[0].name == "weather" else {}
    assert arguments == expected
    assert stream.push("</s>", special=True) == []
