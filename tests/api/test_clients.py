"""Real client libraries against the router: they parse our responses as they parse TGI's."""

from __future__ import annotations

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from text_generation import AsyncClient, Client
from text_generation.errors import ValidationError

PROMPT = "Hello world"


def test_text_generation_client(tgi_url):
    client = Client(tgi_url, timeout=60)
    response = client.generate(PROMPT, max_new_tokens=5, decoder_input_details=True, top_n_tokens=2)
    details = response.details
    assert details.generated_tokens == len(details.tokens) <= 5
    assert details.prefill[0].logprob is None and len(details.prefill) > 1
    assert len(details.top_tokens) == len(details.tokens)
    assert response.generated_text == "".join(t.text for t in details.tokens)

    events = list(client.generate_stream(PROMPT, max_new_tokens=5))
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text == response.generated_text
    assert events[-1].details.generated_tokens == details.generated_tokens

    sampled = client.generate(PROMPT, max_new_tokens=3, do_sample=True, seed=11)
    assert sampled.details.seed == 11
    with pytest.raises(ValidationError, match="Input validation error: `top_n_tokens` must be"):
        client.generate(PROMPT, max_new_tokens=3, top_n_tokens=50)
    with pytest.raises(ValidationError, match="`inputs` tokens \\+ `max_new_tokens`"):
        list(client.generate_stream("word " * 3100, max_new_tokens=2000))


async def test_text_generation_async_client(tgi_url):
    client = AsyncClient(tgi_url, timeout=60)
    response = await client.generate(PROMPT, max_new_tokens=4, best_of=2, do_sample=True)
    assert len(response.details.best_of_sequences) == 1
    greedy = await client.generate(PROMPT, max_new_tokens=4)
    texts = [event.token.text async for event in client.generate_stream(PROMPT, max_new_tokens=4)]
    assert "".join(texts) == greedy.generated_text


def test_huggingface_hub_client(tgi_url):
    client = InferenceClient(tgi_url, timeout=60)
    # it posts to `/`, where a model without a hub pipeline tag returns the full text (TGI's rule)
    text = client.text_generation(PROMPT, max_new_tokens=4)
    assert isinstance(text, str) and text.startswith(PROMPT)
    generated = text.removeprefix(PROMPT)
    output = client.text_generation(PROMPT, max_new_tokens=4, details=True, return_full_text=False)
    assert output.generated_text == generated
    assert output.details.generated_tokens == len(output.details.tokens)
    chunks = list(client.text_generation(PROMPT, max_new_tokens=4, stream=True, details=True))
    assert "".join(c.token.text for c in chunks) == generated
    assert chunks[-1].generated_text == text
    assert chunks[-1].details.generated_tokens == output.details.generated_tokens
    assert "".join(client.text_generation(PROMPT, max_new_tokens=4, stream=True)) == generated


async def test_huggingface_hub_async_client(tgi_url):
    async with AsyncInferenceClient(tgi_url, timeout=60) as client:
        output = await client.text_generation(
            PROMPT, max_new_tokens=3, details=True, decoder_input_details=True, return_full_text=False
        )
        assert output.details.prefill and output.details.prefill[0].logprob is None
        texts = [c async for c in await client.text_generation(PROMPT, max_new_tokens=3, stream=True)]
        assert "".join(texts) == output.generated_text
