"""OpenAI-compatible bodies: TGI's parsing rules and TGI's exact JSON bytes, without sockets."""

from __future__ import annotations

import pydantic
import pytest

from tgi_async.api.openai_requests import ChatRequest, CompletionRequest, Tool, ToolChoice
from tgi_async.api.openai_responses import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    CompletionChunk,
    CompletionComplete,
    Logprob,
    Logprobs,
    OutputMessage,
    TopLogprob,
    Usage,
    finish_reason,
)
from tgi_async.api.protocol import f32
from tgi_async.api.tool_calls import tool_grammar
from tgi_async.scheduler.request import InferError

USER = [{"role": "user", "content": "Hi"}]


def test_chat_request_mapping_follows_tgi() -> None:
    chat = ChatRequest.model_validate(
        {
            "model": "tgi",
            "messages": USER,
            "max_completion_tokens": 7,
            "temperature": 0,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "top_logprobs": 2,
            "stop": ["\n"],
            "seed": 3,
            "n": 2,
            "logit_bias": None,
            "unknown_field": {"ignored": True},
        }
    )
    params = chat.generate_parameters()
    assert params["max_new_tokens"] == 7
    assert (params["do_sample"], params["temperature"]) == (False, None)
    assert params["repetition_penalty"] == 2.5
    assert params["frequency_penalty"] == 0.25
    assert params["top_n_tokens"] == 2
    assert params["stop"] == ["\n"]
    assert params["seed"] == 3
    assert params["details"] is True
    assert params["adapter_id"] is None


def test_chat_samples_unless_temperature_is_zero() -> None:
    params = ChatRequest.model_validate({"messages": USER, "model": "my-lora"}).generate_parameters()
    assert (params["do_sample"], params["temperature"]) == (True, None)
    assert params["adapter_id"] == "my-lora"
    params = ChatRequest.model_validate({"messages": USER, "temperature": 0.7}).generate_parameters()
    assert (params["do_sample"], params["temperature"]) == (True, 0.7)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ToolChoice(kind="auto")),
        ("auto", ToolChoice(kind="auto")),
        ("none", ToolChoice(kind="none")),
        ("required", ToolChoice(kind="required")),
        ("myfn", ToolChoice(kind="function", name="myfn")),
        ({"type": "function", "function": {"name": "myfn"}}, ToolChoice(kind="function", name="myfn")),
    ],
)
def test_tool_choice_forms(value: object, expected: ToolChoice) -> None:
    assert ChatRequest.model_validate({"messages": USER, "tool_choice": value}).tool_choice == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
        {"messages": USER, "stop": "\n"},
        {"messages": USER, "seed": -1},
        {"messages": USER, "max_tokens": -5},
        {"messages": USER, "tool_choice": {"type": "nope"}},
    ],
)
def test_bodies_tgi_refuses(body: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        ChatRequest.model_validate(body)


def test_completion_prompt_forms() -> None:
    assert CompletionRequest.model_validate({"prompt": "a"}).prompt == ["a"]
    assert CompletionRequest.model_validate({"prompt": ["a", "b"]}).prompt == ["a", "b"]
    with pytest.raises(pydantic.ValidationError, match="Empty array detected"):
        CompletionRequest.model_validate({"prompt": []})
    params = CompletionRequest.model_validate({"prompt": "a", "temperature": 0.0}).generate_parameters()
    assert (params["do_sample"], params["temperature"]) == (False, None)


def test_finish_reason_mapping() -> None:
    assert finish_reason("eos_token") == "stop"
    assert finish_reason("length") == "length"
    assert finish_reason("stop_sequence") == "stop_sequence"
    assert finish_reason("eos_token", use_stop=False) == "eos_token"


def test_f32_prints_like_serde() -> None:
    assert f32(-0.3400000035762787) == -0.34
    assert repr(f32(-1.2345678806304932)) == "-1.2345679"
    assert f32(float("nan")) is None
    assert f32(float("-inf")) is None
    assert f32(0.0) == 0.0


def test_chat_completion_bytes() -> None:
    top = TopLogprob(token="a", logprob=None)
    body = ChatCompletion(
        created=1,
        model="m",
        system_fingerprint="3.3.6-dev0-native",
        choices=[
            ChatCompletionComplete(
                message=OutputMessage(content="é"),
                logprobs=Logprobs(content=[Logprob(token="é", logprob=-0.5, top_logprobs=[top])]),
                finish_reason="stop",
            )
        ],
        usage=Usage.of(3, 1),
    )
    assert body.model_dump_json() == (
        '{"object":"chat.completion","id":"","created":1,"model":"m","system_fingerprint":"3.3.6-dev0-native",'
        '"choices":[{"index":0,"message":{"role":"assistant","content":"é"},"logprobs":{"content":'
        '[{"token":"é","logprob":-0.5,"top_logprobs":[{"token":"a","logprob":null}]}]},"finish_reason":"stop"}],'
        '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )


def test_chunk_bytes() -> None:
    chunk = ChatCompletionChunk(
        created=1,
        model="m",
        system_fingerprint="f",
        choices=[ChatCompletionChoice(delta=OutputMessage(content="a"), logprobs=None, finish_reason=None)],
    )
    assert chunk.model_dump_json() == (
        '{"object":"chat.completion.chunk","id":"","created":1,"model":"m","system_fingerprint":"f",'
        '"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":null,"finish_reason":null}],'
        '"usage":null}'
    )
    text_chunk = CompletionChunk(
        created=1,
        model="m",
        system_fingerprint="f",
        choices=[CompletionComplete(index=0, text="a", finish_reason="")],
    )
    assert text_chunk.model_dump_json() == (
        '{"object":"text_completion","id":"","created":1,"choices":[{"index":0,"text":"a","logprobs":null,'
        '"finish_reason":""}],"model":"m","system_fingerprint":"f"}'
    )


WEATHER = Tool.model_validate(
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Get the weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
)


def test_tool_grammar_follows_tgi() -> None:
    assert tool_grammar([WEATHER], ToolChoice(kind="none")) is None
    assert tool_grammar([], ToolChoice(kind="required")) is None
    tools, grammar = tool_grammar([WEATHER], ToolChoice(kind="auto"))
    assert [t.function.name for t in tools] == ["weather", "no_tool"]
    assert grammar.type == "json"
    assert grammar.value["properties"] == {
        "function": {"anyOf": [{"$ref": "#/$functions/weather"}, {"$ref": "#/$functions/no_tool"}]}
    }
    assert grammar.value["required"] == ["function"]  # beyond TGI (tool_calls.tool_grammar)
    assert grammar.value["$functions"]["weather"] == {
        "description": "Get the weather",
        "additionalProperties": False,
        "properties": {"_name": {"type": "string", "const": "weather"}, "city": {"type": "string"}},
        "required": ["_name", "city"],
    }
    tools, _ = tool_grammar([WEATHER], ToolChoice(kind="function", name="weather"))
    assert tools == [WEATHER]
    with pytest.raises(InferError) as info:
        tool_grammar([WEATHER], ToolChoice(kind="function", name="nope"))
    assert (info.value.message, info.value.error_type) == ("Tool with name nope not found", "tool_error")
