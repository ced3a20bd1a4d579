"""`tgi-async launch` end to end: readiness, clients unchanged, 200 concurrent requests, clean shutdown."""

from __future__ import annotations

import asyncio

import httpx
from huggingface_hub import InferenceClient
from openai import OpenAI
from text_generation import AsyncClient, Client

WORDS = "the batch decode prefill stream router shard queue kernel tensor cache block slot".split()


def prompt(i: int) -> str:
    return " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 17))


def test_text_generation_client_streams_the_final_text(launched: str) -> None:
    client = Client(launched)
    response = client.generate("The router", max_new_tokens=12, decoder_input_details=True)
    streamed = "".join(r.token.text for r in client.generate_stream("The router", max_new_tokens=12))
    assert response.generated_text == streamed
    assert response.details.generated_tokens == 12
    assert response.details.prefill and len(response.details.tokens) == 12


def test_hub_and_openai_clients(launched: str) -> None:
    hub = InferenceClient(base_url=launched)
    messages = [{"role": "user", "content": "hi"}]
    chat = hub.chat_completion(messages, max_tokens=8, temperature=0)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in hub.chat_completion(messages, max_tokens=8, temperature=0, stream=True)
    )
    assert chat.choices[0].message.content == streamed
    openai = OpenAI(base_url=f"{launched}/v1", api_key="-")
    completion = openai.completions.create(model="tgi", prompt="The batch", max_tokens=6, temperature=0)
    assert completion.usage.completion_tokens == 6


async def test_200_concurrent_requests_match_their_solo_outputs(launched: str) -> None:
    async def generate(client: httpx.AsyncClient, text: str) -> str:
        body = {"inputs": text, "parameters": {"max_new_tokens": 16, "do_sample": False}}
        response = await client.post(f"{launched}/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()["generated_text"]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=256)) as client:
        solo = {i: await generate(client, prompt(i)) for i in range(20)}
        together = await asyncio.gather(*(generate(client, prompt(i % 20)) for i in range(200)))
    assert [solo[i % 20] for i in range(200)] == together


async def test_async_client_streams(launched: str) -> None:
    client = AsyncClient(launched)
    final = await client.generate("queue kernel", max_new_tokens=10)
    tokens = [r.token.text async for r in client.generate_stream("queue kernel", max_new_tokens=10)]
    assert "".join(tokens) == final.generated_text
