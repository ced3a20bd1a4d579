"""Chat-template failures over real HTTP: a model without a template, a template that raises.

These requests fail before anything is scheduled, so the app runs with no scheduler (`None`): a request
that reached one would answer 500 and fail the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI, UnprocessableEntityError

from tests.api.local_server import serve
from tgi_async.api.app import create_app
from tgi_async.api.config import ApiConfig

MESSAGES = [{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}]
RAISING = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
)


def serve_api(tokenizer: object) -> Iterator[str]:
    config = ApiConfig(model_id="tiny", max_input_tokens=1000, max_total_tokens=2048)
    yield from serve(create_app(config, scheduler=None, tokenizer=tokenizer))  # type: ignore[arg-type]


def tokenizer_with_template(model_dir: Path, template: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def no_template_url(tiny_model_dir: Path) -> Iterator[str]:
    yield from serve_api(tokenizer_with_template(tiny_model_dir, None))


@pytest.fixture(scope="module")
def raising_url(tiny_model_dir: Path) -> Iterator[str]:
    yield from serve_api(tokenizer_with_template(tiny_model_dir, RAISING))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat_tokenize", "/invocations"])
@pytest.mark.parametrize("stream", [False, True])
def test_missing_template_is_a_422(no_template_url: str, path: str, stream: bool) -> None:
    response = httpx.post(
        f"{no_template_url}{path}", json={"messages": MESSAGES, "stream": stream}, timeout=30
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"error":"Template error: template not found","error_type":"template_error"}'


def test_missing_template_with_the_openai_sdk(no_template_url: str) -> None:
    client = OpenAI(base_url=f"{no_template_url}/v1", api_key="-", max_retries=0)
    with pytest.raises(UnprocessableEntityError) as info:
        client.chat.completions.create(model="tgi", messages=MESSAGES)
    assert info.value.body == "Template error: template not found"  # the SDK keeps `error` only


def test_completions_do_not_need_a_template(no_template_url: str) -> None:
    # NOTE: validation refuses the request before scheduling (top_p must be < 1), proving it got that far.
    body = {"prompt": "Hello", "top_p": 1.0}
    response = httpx.post(f"{no_template_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 422
    assert response.json() == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "error_type": "validation",
    }


def test_template_exception_is_a_422_with_tgi_message(raising_url: str) -> None:
    response = httpx.post(f"{raising_url}/v1/chat/completions", json={"messages": MESSAGES}, timeout=30)
    assert response.status_code == 422
    assert response.json() == {
        "error": "Template error: syntax error: System role not supported (in <string>:1)",
        "error_type": "template_error",
    }
    ok = httpx.post(f"{raising_url}/chat_tokenize", json={"messages": MESSAGES[1:]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["templated_text"] == ""


def test_failures_are_counted_like_tgi(raising_url: str) -> None:
    httpx.post(f"{raising_url}/v1/chat/completions", json={"messages": MESSAGES}, timeout=30)
    metrics = httpx.get(f"{raising_url}/metrics", timeout=30).text
    assert 'tgi_request_failure{err="template"}' in metrics
