"""OpenAI-style routes end to end: real shard + router (`router_url`), real openai / huggingface_hub clients.

The tiny model's template is ChatML; greedy requests (`temperature: 0`) are deterministic, so a streamed
answer joined must equal the same request answered at once.
"""

from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from openai import APIError, OpenAI, UnprocessableEntityError

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about the router."},
]
GREEDY = {"max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def model_id(router_url: str) -> str:
    return httpx.get(f"{router_url}/info", timeout=30).json()["model_id"]


@pytest.fixture(scope="module")
def openai_client(router_url: str) -> OpenAI:
    return OpenAI(base_url=f"{router_url}/v1", api_key="-", max_retries=0, timeout=60)


def sse_payloads(body: bytes) -> list[str]:
    """The `data:` payloads of a raw SSE body, checking TGI's framing on the way."""
    assert body.endswith(b"data: [DONE]\n\n")
    events = [event for event in body.split(b"\n\n") if event and not event.startswith(b":")]
    assert all(event.startswith(b"data: ") for event in events)
    return [event[len(b"data: ") :].decode() for event in events]


def test_models_lists_the_served_model(router_url: str, model_id: str, openai_client: OpenAI) -> None:
    body = httpx.get(f"{router_url}/v1/models", timeout=30).json()
    assert body == {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}],
    }
    assert [m.id for m in openai_client.models.list()] == [model_id]


def test_openai_chat_stream_joins_to_the_final_answer(openai_client: OpenAI, model_id: str) -> None:
    final = openai_client.chat.completions.create(model="tgi", messages=MESSAGES, **GREEDY)
    assert final.object == "chat.completion"
    assert final.id == ""
    assert final.model == model_id
    assert final.system_fingerprint.endswith("-native")
    choice = final.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    assert choice.logprobs is None
    usage = final.usage
    assert usage is not None and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        openai_client.chat.completions.create(
            model="tgi", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    *token_chunks, usage_chunk = chunks
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in token_chunks)
    assert "".join(c.choices[0].delta.content or "" for c in token_chunks) == choice.message.content
    assert [c.choices[0].finish_reason for c in token_chunks][-1] == choice.finish_reason
    assert all(c.choices[0].finish_reason is None for c in token_chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.model_dump() == usage.model_dump()


def test_chat_stream_bytes_and_model_echo(router_url: str) -> None:
    body = {"model": "my-model", "messages": MESSAGES, "stream": True, **GREEDY}
    response = httpx.post(f"{router_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    payloads = sse_payloads(response.content)
    assert payloads[-1] == "[DONE]"
    first = json.loads(payloads[0])
    assert list(first) == ["object", "id", "created", "model", "system_fingerprint", "choices", "usage"]
    assert first["model"] == "my-model"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    compact = json.dumps(first, separators=(",", ":"), ensure_ascii=False)
    assert payloads[0] == compact and '"usage":null' in compact


def test_chat_logprobs_and_top_logprobs(openai_client: OpenAI) -> None:
    final = openai_client.chat.completions.create(
        model="tgi", messages=MESSAGES, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = final.choices[0].logprobs.content
    assert final.usage is not None and len(content) == final.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    stream = openai_client.chat.completions.create(
        model="tgi", messages=MESSAGES, logprobs=True, top_logprobs=2, stream=True, **GREEDY
    )
    streamed = [chunk.choices[0].logprobs.content[0] for chunk in stream]
    assert [e.logprob for e in streamed] == [e.logprob for e in content]


def test_stop_sequence_and_seed(openai_client: OpenAI) -> None:
    free = openai_client.chat.completions.create(model="tgi", messages=MESSAGES, logprobs=True, **GREEDY)
    # NOTE: like TGI, a stop sequence is matched at the end of the text, so it must end on a token
    stop = "".join(entry.token for entry in free.choices[0].logprobs.content[:3])
    assert "\ufffd" not in stop, "pick another prompt: the first tokens are partial characters"
    stopped = openai_client.chat.completions.create(model="tgi", messages=MESSAGES, stop=[stop], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop_sequence"  # NOTE: TGI maps only EOS to "stop"
    assert stopped.choices[0].message.content == stop
    assert stopped.usage is not None and stopped.usage.completion_tokens == 3
    sampled = [
        openai_client.chat.completions.create(
            model="tgi", messages=MESSAGES, max_tokens=12, temperature=1.5, seed=1234
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_openai_completions_stream_and_not(openai_client: OpenAI, model_id: str) -> None:
    final = openai_client.completions.create(model="tgi", prompt="The batch", max_tokens=6, temperature=0)
    assert final.object == "text_completion" and final.model == model_id
    assert final.choices[0].index == 0 and final.choices[0].finish_reason in ("length", "stop")
    assert final.usage is not None and final.usage.completion_tokens >= 1
    chunks = list(
        openai_client.completions.create(
            model="tgi", prompt="The batch", max_tokens=6, temperature=0, stream=True
        )
    )
    assert all(c.choices[0].finish_reason == "" for c in chunks[:-1])
    last = chunks[-1]
    assert last.usage is not None and last.usage.model_dump() == final.usage.model_dump()
    texts = [c.choices[0].text for c in chunks]
    if last.choices[0].finish_reason == "eos_token":
        texts = texts[:-1]  # NOTE: TGI streams the EOS token's own text in the last chunk
    else:
        assert last.choices[0].finish_reason == "length"
    assert "".join(texts) == final.choices[0].text


def test_completions_with_several_prompts(router_url: str) -> None:
    prompts = ["One prompt", "Another prompt here", "A third"]
    body = {"model": "tgi", "prompt": prompts, "max_tokens": 4, "temperature": 0}
    final = httpx.post(f"{router_url}/v1/completions", json=body, timeout=60)
    assert final.status_code == 200
    assert final.headers["x-prompt-tokens"] == str(final.json()["usage"]["prompt_tokens"])
    choices = final.json()["choices"]
    assert sorted(c["index"] for c in choices) == [0, 1, 2]
    streamed = httpx.post(f"{router_url}/v1/completions", json={**body, "stream": True}, timeout=60)
    chunks = [json.loads(p) for p in sse_payloads(streamed.content)[:-1]]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1, 2}
    assert sum(1 for c in chunks if "usage" in c) == 3


def test_huggingface_hub_chat_completion(router_url: str) -> None:
    client = InferenceClient(base_url=router_url, timeout=60)
    final = client.chat_completion(MESSAGES, max_tokens=12, temperature=0)
    chunks = list(client.chat_completion(MESSAGES, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == final.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == final.choices[0].finish_reason


def test_huggingface_hub_text_generation(router_url: str) -> None:
    client = InferenceClient(base_url=router_url, timeout=60)
    final = client.text_generation("The router", max_new_tokens=6, details=True)
    assert final.details is not None and final.details.generated_tokens == len(final.details.tokens)
    streamed = list(client.text_generation("The router", max_new_tokens=6, details=True, stream=True))
    assert streamed[-1].generated_text == final.generated_text
    assert [t.token.id for t in streamed] == [t.id for t in final.details.tokens]
    texts = list(client.text_generation("The router", max_new_tokens=6, stream=True))
    assert texts == [t.text for t in final.details.tokens]


def test_tool_choice_none_generates_like_no_tools(openai_client: OpenAI) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    plain = openai_client.chat.completions.create(model="tgi", messages=MESSAGES, **GREEDY)
    with_none = openai_client.chat.completions.create(
        model="tgi", messages=MESSAGES, tools=tools, tool_choice="none", **GREEDY
    )
    assert with_none.choices[0].message.content == plain.choices[0].message.content


def test_disabled_grammar_support_refuses_tools_like_tgi(start_router) -> None:
    url = start_router("--disable-grammar-support")
    client = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=60)
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    with pytest.raises(UnprocessableEntityError) as info:
        client.chat.completions.create(model="tgi", messages=MESSAGES, tools=tools, **GREEDY)
    assert info.value.response.json() == {
        "error": "Input validation error: grammar is not supported",
        "error_type": "validation",
    }
    # streamed, TGI reports the same validation error inside a 200 stream, then [DONE]
    body = {"messages": MESSAGES, "tools": tools, "stream": True, **GREEDY}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.content == (
        b'data: {"error":{"message":"Input validation error: grammar is not supported",'
        b'"http_status_code":422}}\n\ndata: [DONE]\n\n'
    )
    with pytest.raises(APIError, match="grammar is not supported"):
        list(client.chat.completions.create(model="tgi", messages=MESSAGES, tools=tools, stream=True))
    grammar = {"type": "regex", "value": "a+"}
    response = httpx.post(f"{url}/generate", json={"inputs": "a", "parameters": {"grammar": grammar}})
    assert (response.status_code, response.json()["error"]) == (
        422,
        "Input validation error: grammar is not supported",
    )
    # no grammar: served as usual
    assert client.chat.completions.create(model="tgi", messages=MESSAGES, **GREEDY).choices


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"temperature": -1.0}, "Input validation error: `temperature` must be strictly positive"),
        ({"top_p": 1.0}, "Input validation error: `top_p` must be > 0.0 and < 1.0"),
        ({"top_logprobs": 9}, "Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 9"),
        (
            {"stop": ["a", "b", "c", "d", "e"]},
            "Input validation error: `stop` supports up to 4 stop sequences. Given: 5",
        ),
        (
            {"response_format": {"type": "json", "value": {"type": "object"}}},
            "Input validation error: grammar is not valid: Grammar must have a 'properties' field",
        ),
        (
            {"tools": [], "response_format": {"type": "json", "value": {}}},
            "Tool error: Grammar and tools are mutually exclusive",
        ),
        ({"tools": [], "tool_choice": "nope"}, "Tool error: Tool with name nope not found"),
    ],
)
def test_bad_parameters_answer_tgi_errors(router_url: str, body: dict, error: str) -> None:
    response = httpx.post(
        f"{router_url}/v1/chat/completions", json={"messages": MESSAGES, **body}, timeout=60
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error


def test_bodies_that_do_not_parse(router_url: str) -> None:
    url = f"{router_url}/v1/chat/completions"
    missing = httpx.post(url, json={"model": "tgi"}, timeout=30)
    assert missing.status_code == 422 and "missing field `messages`" in missing.text
    assert (
        httpx.post(url, content=b"{", headers={"content-type": "application/json"}, timeout=30).status_code
        == 400
    )
    assert httpx.post(url, content=b"{}", timeout=30).status_code == 415
    empty = httpx.post(f"{router_url}/v1/completions", json={"prompt": []}, timeout=30)
    assert empty.status_code == 422 and "Empty array detected" in empty.text


def test_completion_refusals(router_url: str) -> None:
    url = f"{router_url}/v1/completions"
    suffix = httpx.post(url, json={"prompt": "a", "suffix": "b"}, timeout=30)
    assert (suffix.status_code, suffix.json()) == (
        422,
        {
            "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "error_type": "suffix not supported",
        },
    )
    many = httpx.post(url, json={"prompt": ["a"] * 5}, timeout=30)
    assert many.status_code == 422 and many.json()["error_type"] == "batch size exceeded"


def test_chat_tokenize(router_url: str, tiny_tokenizer) -> None:
    body = {"messages": [{"role": "user", "content": "Héllo"}]}
    response = httpx.post(f"{router_url}/chat_tokenize", json=body, timeout=30)
    assert response.status_code == 200
    answer = response.json()
    text = answer["templated_text"]
    assert text == "<s><|im_start|>user\nHéllo<|im_end|>\n<|im_start|>assistant\n"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = answer["tokenize_response"]
    assert [t["id"] for t in tokens] == ids
    raw = text.encode()
    assert all(raw[t["start"] : t["stop"]].decode() == t["text"] for t in tokens)


def test_invocations_routes_chat_and_completion_bodies(router_url: str) -> None:
    chat = httpx.post(f"{router_url}/invocations", json={"messages": MESSAGES, **GREEDY}, timeout=60)
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    completion = httpx.post(f"{router_url}/invocations", json={"prompt": "a", "max_tokens": 2}, timeout=60)
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
