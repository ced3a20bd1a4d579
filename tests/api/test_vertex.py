"""POST /vertex end to end (TGI's vertex.rs): a real router over the bundled shard (tiny model), real HTTP."""

from __future__ import annotations

import httpx
import pytest

PLAIN = "text/plain; charset=utf-8"


@pytest.fixture(scope="module")
def http(tgi_url: str):
    with httpx.Client(base_url=tgi_url, timeout=60) as client:
        yield client


def test_generate_instances_predict_in_order(http):
    instances = [{"inputs": "Hello", "parameters": {"max_new_tokens": n, "seed": 1}} for n in (1, 4)]
    r = http.post("/vertex", json={"instances": instances})
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")
    predictions = r.json()["predictions"]
    assert list(r.json()) == ["predictions"] and len(predictions) == 2
    # the one-token prediction is the four-token one's first token: same seed, same prompt, in order
    assert predictions[0] and predictions[1].startswith(predictions[0]) and predictions[1] != predictions[0]


def test_chat_instance_is_served_like_tgis_untagged_enum(http):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "seed": 2}
    generate = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    r = http.post("/vertex", json={"instances": [chat, generate]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, str) and p for p in predictions)
    completion = http.post("/v1/chat/completions", json=chat).json()
    assert predictions[0] == completion["choices"][0]["message"]["content"]


def test_empty_instance_beside_a_good_one_is_its_validation_error(http):
    """TGI answers 500 "Incomplete generation" here; a client's empty input is the client's 422."""
    good = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    r = http.post("/vertex", json={"instances": [good, {"inputs": ""}]})
    assert (r.status_code, r.headers["content-type"]) == (422, "application/json")
    empty = "Input validation error: `inputs` cannot be empty"
    assert r.json() == {"error": empty, "error_type": "validation"}
    assert http.post("/vertex", json={"instances": [good]}).status_code == 200


def test_no_instances_is_tgis_validation_error(http):
    r = http.post("/vertex", json={"instances": []})
    assert r.status_code == 422
    assert r.json() == {"error": "Input validation error", "error_type": "Input validation error"}


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b'{"instances": [{"inputs": "a"}, {"prompt": "a"}]}', 422, "instances[1]: "),
        (b'{"instances": [{"inputs": "a", "parameters": {"seed": "1"}}]}', 422, "instances[0]: "),
        (b'{"instances": {}}', 422, "instances: invalid type: map, expected a sequence"),
        (b'{"instances": [', 400, "Failed to parse the request body as JSON: "),
    ],
)
def test_unusable_bodies_get_serdes_plain_text(http, body, status, text):
    r = http.post("/vertex", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.headers["content-type"]) == (status, PLAIN)
    if text.endswith("]: "):
        text += "data did not match any variant of untagged enum VertexInstance"
        assert r.text == "Failed to deserialize the JSON body into the target type: " + text
    else:
        assert text in r.text
