"""Prefix caching end to end (router + bundled shard, both schedulers): a repeated prompt reuses its KV,
the 1,024-token continuation of a long generation reuses the KV its first piece computed, outputs do not
change."""

from __future__ import annotations

import re

import httpx


def cached_tokens(url: str) -> tuple[float, float]:
    """(sum, count) of tgi_async_prefix_cached_tokens."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = re.search(r"^tgi_async_prefix_cached_tokens_sum (\S+)$", text, re.MULTILINE)
    count = re.search(r"^tgi_async_prefix_cached_tokens_count (\S+)$", text, re.MULTILINE)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def generate(url: str, text: str, max_new_tokens: int) -> dict:
    body = {"inputs": text, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
    response = httpx.post(f"{url}/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_repeated_prompt_reuses_its_kv_and_answers_the_same(router_url: str) -> None:
    prompt = " ".join(["the shared system prompt of every chat with this model"] * 12)
    first = generate(router_url, prompt, 8)
    before_sum, before_count = cached_tokens(router_url)
    second = generate(router_url, prompt, 8)
    after_sum, after_count = cached_tokens(router_url)
    assert second["generated_text"] == first["generated_text"]
    assert after_count == before_count + 1
    assert after_sum - before_sum >= 64  # whole 16-token blocks of the ~100-token prompt


def test_the_continuation_of_a_long_generation_reuses_its_first_piece(router_url: str) -> None:
    """Like TGI, a request gets at most 1,024 new tokens a time, then the prompt and the text so far are
    prompted again. The first piece's KV (the prompt and the 1,023 tokens fed back) is cached when it ends,
    and the continuation reuses it as far as its text tokenizes to the same ids: the whole prompt here (the
    tiny random model's bytes re-tokenize differently right after it; a real model's text mostly does not)."""
    prompt = "The router " * 50  # 151 tokens: 9 whole blocks
    before_sum, before_count = cached_tokens(router_url)
    answer = generate(router_url, prompt, 1100)
    after_sum, after_count = cached_tokens(router_url)
    assert answer["details"]["generated_tokens"] == 1100  # the tiny model is greedy, seeded: no early EOS
    assert after_count == before_count + 2  # the first piece, then its continuation
    assert after_sum - before_sum >= 144, (before_sum, after_sum)
