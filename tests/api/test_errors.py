"""InferError -> TGI's status codes and `{"error", "error_type"}` bodies."""

from __future__ import annotations

import json

import pytest

from tgi_async.api.errors import error_message, error_response
from tgi_async.scheduler.request import InferError


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (
            InferError("`top_k` must be strictly positive", "validation"),
            422,
            "Input validation error: `top_k` must be strictly positive",
        ),
        (
            InferError("CUDA out of memory", "generation"),
            424,
            "Request failed during generation: CUDA out of memory",
        ),
        (InferError("anything", "overloaded"), 429, "Model is overloaded"),
        (InferError("x", "incomplete_generation"), 500, "Incomplete generation"),
        (InferError("x", "incomplete_generation_stream"), 500, "Incomplete generation stream"),
        (InferError("bad template", "template_error"), 422, "Template error: bad template"),
        (InferError("t", "tool_error"), 422, "Tool error: t"),
    ],
)
def test_status_and_body(error, status, message):
    response = error_response(error)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"error": message, "error_type": error.error_type}
    assert list(json.loads(response.body)) == ["error", "error_type"]


def test_prefix_is_not_doubled():
    already = InferError("Input validation error: `inputs` cannot be empty", "validation")
    assert error_message(already) == "Input validation error: `inputs` cannot be empty"
