"""Soak: on every streaming route, under both schedulers, the text a client joins from the stream is the
final text: /generate_stream's own `generated_text`, or for the OpenAI routes (whose streams carry no final
text) the non-streamed answer to the same request (greedy, or sampled with a seed).

3,000 requests mix /generate_stream, /v1/chat/completions and /v1/completions (streamed, each beside its
non-streamed twin), stop sequences, seeds, lengths, prompts holding special tokens and multi-byte characters
(the tiny model then emits special tokens and split characters of its own).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tokenizers import Tokenizer

from integration_tests.conftest import launch, tgi_shard_available
from integration_tests.stream_text import joined_chat, joined_completion, joined_tokens, sse_data

CASES = 2000  # 3,000 requests: a /generate_stream alone, an OpenAI route with its non-streamed twin
CONCURRENCY = 48
PROMPTS = [
    "The router",
    "queue kernel tensor cache",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "日本語 café 🙂 naïve",
    "<pad><s> stream</s> shard",
    "x = y + 1; def f(a, b):",
    "emoji 🙂🙂 Ünïcödé<|im_end|>",
    "a",
]
STOPS = ["e", " the", ".", "<|im_end|>", "\n", "ing", "</s>", "🙂"]


@dataclass
class Case:
    route: str  # "generate" | "chat" | "completions"
    prompt: str
    max_new_tokens: int
    seed: int | None  # None: greedy
    stop: list[str] = field(default_factory=list)


def soak_cases(count: int, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        stop = rng.sample(STOPS, rng.choice([0, 0, 1, 2]))
        seed_or_greedy = None if rng.random() < 0.4 else rng.randrange(2**32)
        route = rng.choice(["generate", "generate", "chat", "completions"])
        cases.append(Case(route, rng.choice(PROMPTS), rng.randint(1, 32), seed_or_greedy, stop))
    return cases


def generate_body(case: Case) -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_new_tokens": case.max_new_tokens, "stop": case.stop, "details": True}
    if case.seed is not None:
        parameters |= {"do_sample": True, "seed": case.seed, "top_k": 50, "temperature": 1.3}
    return {"inputs": case.prompt, "parameters": parameters}


def openai_body(case: Case) -> dict[str, Any]:
    # NOTE: the OpenAI routes sample unless temperature is 0
    sampling = {"temperature": 0} if case.seed is None else {"seed": case.seed, "temperature": 1.3}
    body: dict[str, Any] = {"model": "tgi", "max_tokens": case.max_new_tokens, "stop": case.stop, **sampling}
    if case.route == "chat":
        return body | {"messages": [{"role": "user", "content": case.prompt}]}
    return body | {"prompt": case.prompt}


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    response = await client.post(path, json=body)
    assert response.status_code == 200, f"{path} {body}: {response.status_code} {response.text}"
    return response


async def check_generate(client: httpx.AsyncClient, case: Case) -> list[str]:
    events = sse_data((await post(client, "/generate_stream", generate_body(case))).text)
    joined, text = joined_tokens(event["token"] for event in events), events[-1]["generated_text"]
    return [] if joined == text else [f"stream tokens {joined!r} != its generated_text {text!r}"]


async def check_openai(client: httpx.AsyncClient, case: Case, special_texts: set[str]) -> list[str]:
    path = "/v1/chat/completions" if case.route == "chat" else "/v1/completions"
    body = openai_body(case)
    streamed, whole = await asyncio.gather(
        post(client, path, body | {"stream": True}), post(client, path, body)
    )
    chunks, choice = sse_data(streamed.text), whole.json()["choices"][0]
    if case.route == "chat":
        joined, text = joined_chat(chunks), choice["message"]["content"]
    else:
        joined, text = joined_completion(chunks, special_texts), choice["text"]
    return [] if joined == text else [f"joined stream {joined!r} != non-streamed {text!r}"]


async def soak(url: str, special_texts: set[str], count: int = CASES) -> dict[str, list[str]]:
    """{case: its problems} for every case that has one."""
    gate = asyncio.Semaphore(CONCURRENCY)
    # NOTE: idle connections expire before the server's keep-alive does, so none is reused as it closes
    limits = httpx.Limits(max_connections=2 * CONCURRENCY, keepalive_expiry=1)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def run(case: Case) -> list[str]:
            async with gate:
                if case.route == "generate":
                    return await check_generate(client, case)
                return await check_openai(client, case, special_texts)

        cases = soak_cases(count)
        results = await asyncio.gather(*(run(case) for case in cases))
    return {repr(case): problems for case, problems in zip(cases, results, strict=True) if problems}


def special_token_texts(model_dir: Path) -> set[str]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}


def assert_no_mismatch(mismatches: dict[str, list[str]]) -> None:
    kinds = Counter(problem.split(" ")[0] for problems in mismatches.values() for problem in problems)
    shown = "\n".join(f"{case}: {problems}" for case, problems in list(mismatches.items())[:8])
    assert not mismatches, f"{len(mismatches)} cases mismatch ({dict(kinds)}):\n{shown}"


@pytest.mark.parametrize("scheduler", ["async", "sync"])
async def test_streams_join_to_the_final_text(tiny_model_dir: Path, scheduler: str) -> None:
    flags = ("--shard", "bundled", "--scheduler", scheduler, "--max-concurrent-requests", "256")
    child, url = launch(tiny_model_dir, *flags)
    try:
        mismatches = await soak(url, special_token_texts(tiny_model_dir))
    finally:
        assert child.stop(timeout=30) == 0, child.log_tail()
    assert_no_mismatch(mismatches)


@pytest.mark.tgi_shard
@pytest.mark.skipif(tgi_shard_available() is not None, reason=str(tgi_shard_available()))
async def test_tgi_shard_streams_join_to_the_final_text(tgi_model_dir: Path) -> None:
    child, url = launch(tgi_model_dir, "--shard", "tgi", "--max-concurrent-requests", "256")
    try:
        mismatches = await soak(url, special_token_texts(tgi_model_dir), count=300)
    finally:
        assert child.stop(timeout=30) == 0, child.log_tail()
    assert_no_mismatch(mismatches)
