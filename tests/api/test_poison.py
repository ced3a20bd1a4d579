"""One request never hurts another: each poison parameter set arrives beside 4 live requests (both schedulers,
bundled shard); the poison gets a 4xx in TGI's shape, the 4 complete."""

from __future__ import annotations

import asyncio

import httpx
import pytest

POISON = [
    {"temperature": 1e39},  # f32 infinity once rounded, as TGI holds it
    {"repetition_penalty": 1e39},
    {"temperature": 1e-50},  # f32 zero
    {"top_p": 1e-50},
    {"typical_p": 1e-50},
    {"seed": -1},
    {"seed": 2**64},
    {"top_k": 10**12},
    {"frequency_penalty": float("nan")},
    {"stop": ["x" * 100_000]},
    {"adapter_id": "not-a-loaded-adapter"},
]


@pytest.mark.parametrize("poison", POISON, ids=[next(iter(p)) + "=" + str(p)[-12:] for p in POISON])
async def test_a_poison_parameter_fails_alone(router_url: str, poison: dict) -> None:
    async def live(client: httpx.AsyncClient, i: int) -> httpx.Response:
        body = {"inputs": f"a live request number {i}", "parameters": {"max_new_tokens": 12}}
        return await client.post(f"{router_url}/generate", json=body)

    async def poisoned(client: httpx.AsyncClient) -> httpx.Response:
        await asyncio.sleep(0.01)  # the live ones are running when it arrives
        body = {"inputs": "poison", "parameters": {"max_new_tokens": 12, **poison}}
        headers = {"content-type": "application/json"}
        return await client.post(f"{router_url}/generate", content=_json(body), headers=headers)

    async with httpx.AsyncClient(timeout=60) as client:
        *answers, bad = await asyncio.gather(*(live(client, i) for i in range(4)), poisoned(client))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    if bad.status_code != 200:  # refused, or served: either way alone
        assert 400 <= bad.status_code < 500, bad.text
        if bad.headers["content-type"].startswith("application/json"):
            assert set(bad.json()) == {"error", "error_type"}
        else:  # TGI's (axum's) own answers to a body it cannot parse or deserialize: plain text
            rejections = ("Failed to deserialize the JSON body", "Failed to parse the request body as JSON")
            assert bad.text.startswith(rejections), bad.text


def _json(body: dict) -> bytes:
    import json

    return json.dumps(body, allow_nan=True).encode()
