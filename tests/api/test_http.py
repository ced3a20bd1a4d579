"""TGI's native routes end to end: a real router over the bundled shard (tiny model), real HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.api.tgi_shapes import INFO_KEYS

GENERATE_HEADERS = (
    "x-compute-type",
    "x-compute-time",
    "x-compute-characters",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)


@pytest.fixture(scope="module")
def http(tgi_url: str):
    with httpx.Client(base_url=tgi_url, timeout=60) as client:
        yield client


def events(body: bytes) -> list[dict]:
    """Parse an SSE body, checking axum's framing: `data: <json>\\n\\n` (or keep-alive `:\\n\\n`)."""
    assert body.endswith(b"\n\n")
    parsed = []
    for block in body[:-2].split(b"\n\n"):
        if block == b":":
            continue
        assert block.startswith(b"data: ") and b"\n" not in block, block
        parsed.append(json.loads(block[len(b"data: ") :]))
    return parsed


def test_generate_body_and_headers(http):
    prompt = "Hello world"
    r = http.post("/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 5, "details": True}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["generated_text", "details"]
    details = body["details"]
    assert list(details) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens"]
    assert details["generated_tokens"] == len(details["tokens"]) <= 5
    assert details["prefill"] == [] and details["seed"] is None  # greedy: no seed reported
    assert body["generated_text"] == "".join(t["text"] for t in details["tokens"])
    for t in details["tokens"]:
        assert list(t) == ["id", "text", "logprob", "special"] and t["logprob"] <= 0
    for name in GENERATE_HEADERS:
        assert name in r.headers, name
    assert r.headers["x-compute-type"] == "gpu+optimized"
    assert r.headers["x-compute-characters"] == str(len(prompt))
    assert int(r.headers["x-generated-tokens"]) == details["generated_tokens"]
    assert float(r.headers["x-compute-time"]) * 1000 >= int(r.headers["x-total-time"])
    tokenized = http.post("/tokenize", json={"inputs": prompt}).json()
    assert int(r.headers["x-prompt-tokens"]) == len(tokenized)


def test_generate_without_details_has_no_details_key(http):
    r = http.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert list(r.json()) == ["generated_text"]


def test_prefill_and_top_tokens(http):
    r = http.post(
        "/generate",
        json={
            "inputs": "Hello world",
            "parameters": {"max_new_tokens": 3, "decoder_input_details": True, "top_n_tokens": 2},
        },
    )
    details = r.json()["details"]
    prefill = details["prefill"]
    assert len(prefill) == int(r.headers["x-prompt-tokens"])
    assert prefill[0]["logprob"] is None and all(t["logprob"] <= 0 for t in prefill[1:])
    assert list(prefill[0]) == ["id", "text", "logprob"]
    assert len(details["top_tokens"]) == len(details["tokens"])
    assert all(len(top) == 2 for top in details["top_tokens"])


def test_stream_framing_and_events(http):
    r = http.post(
        "/generate_stream",
        json={"inputs": "Hello world", "parameters": {"max_new_tokens": 4, "details": True}},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-compute-characters"] == "11" and "x-compute-type" in r.headers
    stream = events(r.content)
    assert [e["index"] for e in stream] == list(range(1, len(stream) + 1))
    for e in stream[:-1]:
        assert list(e) == ["index", "token", "generated_text", "details"]
        assert e["generated_text"] is None and e["details"] is None
    last = stream[-1]
    assert last["generated_text"] == "".join(e["token"]["text"] for e in stream)
    assert last["details"]["generated_tokens"] == len(stream)
    assert list(last["details"]) == ["finish_reason", "generated_tokens", "seed", "input_length"]
    generated = http.post("/generate", json={"inputs": "Hello world", "parameters": {"max_new_tokens": 4}})
    assert generated.json()["generated_text"] == last["generated_text"]  # greedy: same text either way


def test_stream_without_details_ends_with_null_details(http):
    r = http.post("/generate_stream", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    last = events(r.content)[-1]
    assert last["details"] is None and last["generated_text"] is not None


def test_compat_route(http):
    r = http.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200 and "x-generated-tokens" in r.headers
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    # a local model has no hub pipeline tag: TGI's compat route then returns the full text
    assert body[0]["generated_text"].startswith("Hello")
    r = http.post(
        "/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2, "return_full_text": False}}
    )
    assert not r.json()[0]["generated_text"].startswith("Hello")
    r = http.post("/", json={"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 2}})
    assert r.headers["content-type"] == "text/event-stream"
    assert events(r.content)[-1]["generated_text"].startswith("Hello")


def test_invocations_routes_generate_bodies(http):
    r = http.post("/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200 and isinstance(r.json(), list)
    r = http.post("/invocations", json={"nothing": 1})
    assert r.status_code == 422 and "SagemakerRequest" in r.text


def test_sampling_seed_is_reproducible(http):
    payload = {
        "inputs": "Hello",
        "parameters": {"max_new_tokens": 6, "do_sample": True, "seed": 7, "details": True},
    }
    first, second = http.post("/generate", json=payload).json(), http.post("/generate", json=payload).json()
    assert first == second and first["details"]["seed"] == 7


def test_stop_sequence(http):
    tokens = http.post(
        "/generate", json={"inputs": "Hello world", "parameters": {"max_new_tokens": 6, "details": True}}
    )
    texts = [t["text"] for t in tokens.json()["details"]["tokens"]]
    stop = texts[2]
    r = http.post(
        "/generate",
        json={"inputs": "Hello world", "parameters": {"max_new_tokens": 6, "stop": [stop], "details": True}},
    )
    details = r.json()["details"]
    assert details["finish_reason"] == "stop_sequence"
    assert r.json()["generated_text"].endswith(stop)


def test_best_of(http):
    r = http.post(
        "/generate",
        json={
            "inputs": "Hello",
            "parameters": {"max_new_tokens": 3, "best_of": 2, "do_sample": True, "details": True},
        },
    )
    assert r.status_code == 200, r.text
    sequences = r.json()["details"]["best_of_sequences"]
    assert len(sequences) == 1 and sequences[0]["seed"] is not None
    r = http.post(
        "/generate_stream", json={"inputs": "Hello", "parameters": {"best_of": 2, "do_sample": True}}
    )
    assert r.status_code == 200
    assert events(r.content) == [
        {
            "error": "Input validation error: `best_of` != 1 is not supported when streaming tokens",
            "error_type": "validation",
        }
    ]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "Input validation error: `temperature` must be strictly positive"),
        ({"top_p": 1.5}, "Input validation error: `top_p` must be > 0.0 and < 1.0"),
        ({"top_n_tokens": 10}, "Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 10"),
        ({"stop": ["a"] * 5}, "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"),
        (
            # TGI accepts a large max_new_tokens (it schedules 1024 at a time) unless that chunk cannot fit
            {"max_new_tokens": 5000, "inputs": "word " * 3100},
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
            "Given: {n} `inputs` tokens and 1024 `max_new_tokens`",
        ),
        (
            {"best_of": 3, "do_sample": True},
            "Input validation error: `best_of` must be > 0 and <= 2. Given: 3",
        ),
        (
            {"grammar": {"type": "json", "value": {"type": "object"}}},
            "Input validation error: grammar is not valid: Grammar must have a 'properties' field",
        ),
    ],
)
def test_validation_errors(http, parameters, message):
    parameters = dict(parameters)
    inputs = parameters.pop("inputs", "Hello")
    r = http.post("/generate", json={"inputs": inputs, "parameters": parameters})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["error", "error_type"]
    n = len(http.post("/tokenize", json={"inputs": inputs}).json())
    assert r.json() == {"error": message.format(n=n), "error_type": "validation"}


def test_validation_error_inside_a_stream(http):
    r = http.post("/generate_stream", json={"inputs": "", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200
    assert (
        r.content
        == b'data: {"error":"Input validation error: `inputs` cannot be empty","error_type":"validation"}\n\n'
    )


def test_unusable_bodies_get_axums_plain_text(http):
    r = http.post("/generate", content=b'{"inputs":', headers={"content-type": "application/json"})
    assert (r.status_code, r.headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert r.text.startswith("Failed to parse the request body as JSON: ")
    r = http.post("/generate", content=b'{"inputs": "a"}', headers={"content-type": "text/plain"})
    assert (r.status_code, r.text) == (415, "Expected request with `Content-Type: application/json`")
    r = http.post("/generate", json={"parameters": {}})
    assert (r.status_code, r.text) == (
        422,
        "Failed to deserialize the JSON body into the target type: missing field `inputs`",
    )


def test_unknown_route_and_method_have_empty_bodies(http):
    r = http.get("/nope")
    assert (r.status_code, r.content) == (404, b"")
    r = http.get("/generate")
    assert (r.status_code, r.content) == (405, b"")


def test_info(http, tgi_url):
    r = http.get("/info")
    info = r.json()
    assert list(info)[:14] == INFO_KEYS
    assert info["router"] == "text-generation-router"
    assert (info["max_best_of"], info["max_stop_sequences"], info["max_client_batch_size"]) == (2, 4, 4)
    assert info["max_input_tokens"] < info["max_total_tokens"]


def test_health_ping_and_root(http):
    for path in ("/health", "/ping", "/"):
        r = http.get(path)
        assert (r.status_code, r.content) == (200, b"")


def test_tokenize(http):
    r = http.post("/tokenize", json={"inputs": "Hé café"})
    tokens = r.json()
    assert tokens[0] == {"id": tokens[0]["id"], "text": "", "start": 0, "stop": 0}  # BOS
    raw = "Hé café".encode()
    assert all(raw[t["start"] : t["stop"]].decode(errors="replace") == t["text"] for t in tokens[1:])
    assert tokens[-1]["stop"] == len(raw)


def test_metrics_names(http):
    http.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    http.post("/generate", json={"inputs": "", "parameters": {"max_new_tokens": 2}})
    r = http.get("/metrics")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    lines = r.text.splitlines()
    for sample in ("tgi_request_count ", "tgi_request_success ", 'tgi_request_failure{err="validation"} '):
        assert any(line.startswith(sample) for line in lines), sample
    for name in ("tgi_request_duration", "tgi_request_input_length", "tgi_batch_inference_duration"):
        assert f"# TYPE {name} histogram" in lines
    names = [line.split(" ")[0].split("{")[0] for line in lines if line.startswith("tgi_")]
    assert names and not [name for name in names if name.endswith("_total")]  # TGI's counters: no suffix


def test_openapi_and_docs(http):
    spec = http.get("/api-doc/openapi.json").json()
    for path in ("/", "/generate", "/generate_stream", "/tokenize", "/info", "/health", "/metrics"):
        assert path in spec["paths"], path
    assert http.get("/docs").status_code == 200


def test_cors_defaults(http):
    r = http.options(
        "/generate", headers={"origin": "http://x.example", "access-control-request-method": "POST"}
    )
    assert r.status_code == 200 and r.content == b""
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "GET,POST"
    assert r.headers["access-control-allow-headers"] == "content-type"
    assert http.get("/info").headers["access-control-allow-origin"] == "*"


def test_long_generation_is_one_stream(http):
    # TGI schedules 1024 new tokens at a time and continues transparently; the client sees one stream
    r = http.post(
        "/generate_stream",
        json={"inputs": "Hello world", "parameters": {"max_new_tokens": 1030, "details": True}},
    )
    stream = events(r.content)
    last = stream[-1]
    if last["details"]["finish_reason"] == "eos_token":
        pytest.skip("the tiny model ended before the first 1024-token chunk")
    assert [e["index"] for e in stream] == list(range(1, 1031))
    assert last["details"]["generated_tokens"] == 1030 and last["details"]["finish_reason"] == "length"


async def test_bad_requests_do_not_disturb_good_ones(tgi_url):
    payload = {"inputs": "Hello world", "parameters": {"max_new_tokens": 12}}
    async with httpx.AsyncClient(base_url=tgi_url, timeout=60) as client:
        expected = (await client.post("/generate", json=payload)).json()["generated_text"]

        async def good() -> str:
            r = await client.post("/generate_stream", json=payload)
            return events(r.content)[-1]["generated_text"]

        async def leaver() -> None:
            async with client.stream(
                "POST", "/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 500}}
            ) as r:
                async for _ in r.aiter_bytes():
                    break  # leave mid-stream

        async def bad() -> int:
            r1 = await client.post("/generate", json={"inputs": "Hi", "parameters": {"top_k": -1}})
            r2 = await client.post("/generate", content=b"{", headers={"content-type": "application/json"})
            r3 = await client.post("/generate_stream", json={"inputs": "x" * 20000})
            return r1.status_code + r2.status_code + (r3.status_code if b"error" in r3.content else 0)

        results = await asyncio.gather(good(), bad(), leaver(), good(), bad(), leaver(), good())
    assert [results[0], results[3], results[6]] == [expected] * 3
    assert results[1] == results[4] == 422 + 400 + 200
