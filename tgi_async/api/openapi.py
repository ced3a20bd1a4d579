"""TGI's OpenAPI document (utoipa's, router/src/server.rs `ApiDoc`): each route's operationId, labels and
response media types, and component schemas generated from our pydantic models under TGI's names.

Route modules pass `ROUTES[<operationId>]` to their route decorators; `component_schemas()` fills
`components/schemas`. tests/api/test_openapi.py compares the result with TGI v3.3.7's document and lists
each deliberate difference.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from starlette.responses import Response
from typing_extensions import TypeAliasType

from tgi_async.api import protocol as p
from tgi_async.api.openai_requests import ChatRequest, CompletionRequest, FunctionName
from tgi_async.api.openai_responses import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatTokenizeResponse,
    CompletionChunk,
    CompletionFinal,
    ModelsInfo,
)

TAG = "Text Generation Inference"
REF = "#/components/schemas/"
JSON = "application/json"
SSE = "text/event-stream"

# Our model names that TGI spells differently.
SCHEMA_NAMES = {
    "Grammar": "GrammarType",
    "OutputMessage": "TextMessage",
    "TopLogprob": "ChatCompletionTopLogprob",
    "Logprob": "ChatCompletionLogprob",
    "Logprobs": "ChatCompletionLogprobs",
    "CompletionChunk": "Chunk",
    "DeltaFunction": "Function",
}

# What /invocations takes and answers: a generate, chat or completion body, told apart by its fields.
SagemakerRequest = TypeAliasType(
    "SagemakerRequest", p.CompatGenerateRequest | ChatRequest | CompletionRequest
)
SagemakerResponse = TypeAliasType(
    "SagemakerResponse", list[p.GenerateResponse] | ChatCompletion | CompletionFinal
)
SagemakerStreamResponse = TypeAliasType(
    "SagemakerStreamResponse", p.StreamResponse | ChatCompletionChunk | CompletionChunk
)
# A /v1/completions answer: an event of the stream or the whole completion.
Completion = TypeAliasType("Completion", CompletionChunk | CompletionFinal)

# Every documented schema, with the direction it travels in.
_REQUESTS = (SagemakerRequest, p.GenerateRequest, p.JsonSchemaConfig, FunctionName)
_RESPONSES = (
    p.ErrorResponse,
    p.GenerateResponse,
    p.StreamResponse,
    p.TokenizeResponse,
    p.Info,
    SagemakerResponse,
    SagemakerStreamResponse,
    Completion,
    ChatTokenizeResponse,
    ModelsInfo,
)


def _rename(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: REF + SCHEMA_NAMES.get(value.removeprefix(REF), value.removeprefix(REF))
            if key == "$ref" and isinstance(value, str) and value.startswith(REF)
            else _rename(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rename(item) for item in node]
    return node


def renamed(schemas: dict[str, Any]) -> dict[str, Any]:
    """`schemas` (components) under TGI's names, their $refs too."""
    return {SCHEMA_NAMES.get(name, name): _rename(schema) for name, schema in schemas.items()}


def component_schemas() -> dict[str, Any]:
    """`components/schemas`: every request and response body of TGI's routes, under TGI's names."""
    inputs = [(t, "validation", TypeAdapter(t)) for t in _REQUESTS]
    inputs += [(t, "serialization", TypeAdapter(t)) for t in _RESPONSES]
    _, top = TypeAdapter.json_schemas(inputs, ref_template=REF + "{model}")
    return renamed(top["$defs"])


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def errors(media: str = JSON) -> dict[int, dict[str, Any]]:
    error = {media: {"schema": ref("ErrorResponse")}}
    return {
        422: {"description": "Input validation error", "content": error},
        424: {"description": "Generation Error", "content": error},
        429: {"description": "Model is overloaded", "content": error},
        500: {"description": "Incomplete generation", "content": error},
    }


def route(
    operation_id: str, summary: str, responses: dict[int, Any], body: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of a route decorator. `response_class=Response`: FastAPI adds no media type of
    its own (the handlers build their responses themselves)."""
    kwargs: dict[str, Any] = {
        "operation_id": operation_id,
        "summary": summary,
        "tags": [TAG],
        "response_class": Response,
        "responses": responses,
    }
    if body is not None:
        content = {JSON: {"schema": ref(body)}}
        kwargs["openapi_extra"] = {"requestBody": {"content": content, "required": True}}
    return kwargs


def _answer(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **({"content": content} if content else {})}


_GENERATE_SUMMARY = "Generate tokens"
ROUTES: dict[str, dict[str, Any]] = {
    "compat_generate": route(
        "compat_generate",
        "Generate tokens if `stream == false` or a stream of token if `stream == true`",
        {
            200: _answer(
                "Generated Text",
                {
                    JSON: {"schema": {"type": "array", "items": ref("GenerateResponse")}},
                    SSE: {"schema": ref("StreamResponse")},
                },
            ),
            **errors(),
        },
        body="CompatGenerateRequest",
    ),
    "generate": route(
        "generate",
        _GENERATE_SUMMARY,
        {200: _answer("Generated Text", {JSON: {"schema": ref("GenerateResponse")}}), **errors()},
        body="GenerateRequest",
    ),
    "generate_stream": route(
        "generate_stream",
        "Generate a stream of token using Server-Sent Events",
        {200: _answer("Generated Text", {SSE: {"schema": ref("StreamResponse")}}), **errors(SSE)},
        body="GenerateRequest",
    ),
    "sagemaker_compatibility": route(
        "sagemaker_compatibility",
        "Generate tokens from Sagemaker request",
        {
            200: _answer(
                "Generated Chat Completion",
                {JSON: {"schema": ref("SagemakerResponse")}, SSE: {"schema": ref("SagemakerStreamResponse")}},
            ),
            **errors(),
        },
        body="SagemakerRequest",
    ),
    "health": route(
        "health",
        "Health check method",
        {
            200: _answer("Everything is working fine"),
            503: _answer("Text generation inference is down", {JSON: {"schema": ref("ErrorResponse")}}),
        },
    ),
    "get_model_info": route(
        "get_model_info",
        "Text Generation Inference endpoint info",
        {200: _answer("Served model info", {JSON: {"schema": ref("Info")}})},
    ),
    "metrics": route(
        "metrics",
        "Prometheus metrics scrape endpoint",
        {200: _answer("Prometheus Metrics", {"text/plain": {"schema": {"type": "string"}}})},
    ),
    "tokenize": route(
        "tokenize",
        "Tokenize inputs",
        {
            200: _answer("Tokenized ids", {JSON: {"schema": ref("TokenizeResponse")}}),
            404: _answer("No tokenizer found", {JSON: {"schema": ref("ErrorResponse")}}),
        },
        body="GenerateRequest",
    ),
    "chat_completions": route(
        "chat_completions",
        _GENERATE_SUMMARY,
        {
            200: _answer(
                "Generated Chat Completion",
                {JSON: {"schema": ref("ChatCompletion")}, SSE: {"schema": ref("ChatCompletionChunk")}},
            ),
            **errors(),
        },
        body="ChatRequest",
    ),
    "completions": route(
        "completions",
        _GENERATE_SUMMARY,
        {
            200: _answer(
                "Generated Chat Completion",
                {JSON: {"schema": ref("CompletionFinal")}, SSE: {"schema": ref("Chunk")}},
            ),
            **errors(),
        },
        body="CompletionRequest",
    ),
    "get_chat_tokenize": route(
        "get_chat_tokenize",
        "Template and tokenize ChatRequest",
        {
            200: _answer(
                "Templated and tokenized ChatRequest", {JSON: {"schema": ref("ChatTokenizeResponse")}}
            ),
            404: _answer("Failed to tokenize ChatRequest", {JSON: {"schema": ref("ErrorResponse")}}),
        },
        body="ChatRequest",
    ),
    "openai_get_model_info": route(
        "openai_get_model_info",
        "Get model info",
        {
            # NOTE: TGI's document says ModelInfo; its router answers the list, as we do
            200: _answer("Served model info", {JSON: {"schema": ref("ModelsInfo")}}),
            404: _answer("Model not found", {JSON: {"schema": ref("ErrorResponse")}}),
        },
    ),
}
