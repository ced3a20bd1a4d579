"""The same client checks against TGI's own shard, where it is installed (TGI_SHARD_BIN or importable).

TGI's CPU path is a padded CausalLM shard that serves RPCs one at a time and keeps finished requests until
FilterBatch: the schedulers' other shard kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from text_generation import Client

from integration_tests.conftest import launch, tgi_shard_available

pytestmark = pytest.mark.skipif(tgi_shard_available() is not None, reason=str(tgi_shard_available()))


@pytest.fixture(scope="module", params=["async", "sync"])
def tgi_stack(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[str]:
    child, url = launch(tiny_model_dir, "--shard", "tgi", "--scheduler", request.param)
    yield url
    child.stop(timeout=30)


def test_client_generate_and_stream(tgi_stack: str) -> None:
    client = Client(tgi_stack, timeout=120)
    response = client.generate("The router", max_new_tokens=12, decoder_input_details=True)
    streamed = "".join(r.token.text for r in client.generate_stream("The router", max_new_tokens=12))
    assert response.generated_text == streamed


async def test_concurrent_requests_match_solo(tgi_stack: str) -> None:
    async def generate(client: httpx.AsyncClient, text: str) -> str:
        body = {"inputs": text, "parameters": {"max_new_tokens": 8}}
        response = await client.post(f"{tgi_stack}/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()["generated_text"]

    prompts = [f"prompt number {i} of the batch" for i in range(16)]
    async with httpx.AsyncClient(timeout=300) as client:
        solo = [await generate(client, p) for p in prompts]
        together = await asyncio.gather(*(generate(client, p) for p in prompts))
    assert together == solo
