"""TGI v3.3.7's own openapi.json (tests/data/), read the way TGI's router actually answers.

The document is utoipa's output and in places contradicts the router it describes, or uses forms an
OpenAPI 3.0 reader cannot take. `tgi_openapi()` returns it with exactly these corrections, each backed by
TGI's code (router/src/*.rs at tag v3.3.7); everything else is TGI's text:

1. Numeric `exclusiveMinimum`/`exclusiveMaximum` (JSON Schema 2019+) become OpenAPI 3.0's boolean flags:
   as written, schemathesis cannot generate any body for /generate, /generate_stream, /, /tokenize.
2. Examples of the wrong JSON type (`"example": "null"` on an integer, `"20"` on `max_new_tokens`) are
   dropped: they are utoipa's strings, and a request built from them is not the request the doc means.
3. `text/event-stream` schemas describe each event's `data` as JSON (OpenAPI 3.2's reading of an event
   stream; schemathesis otherwise validates the SSE envelope `{"event", "data"}` itself and fails every
   event). A 200 stream may end with an error event: an ErrorResponse on TGI's own streams
   (`generate_stream_internal`), `{"error": {"message", "http_status_code"}}` on the OpenAI ones
   (infer/mod.rs `OpenAIErrorEvent`), which also end with `data: [DONE]`.
4. Every route with a JSON body also answers axum's `Json` rejections, plain text: 400 (not JSON), 413
   (over --payload-limit), 415 (not `application/json`), 422 (JSON of the wrong shape; serde is stricter than
   the doc, e.g. a message needs `content` or `tool_calls`, `tool_choice`'s object needs `"type"`).
5. GET /v1/models answers `ModelsInfo` (`{"object": "list", "data": [ModelInfo]}`,
   `openai_get_model_info`), which the document calls `ModelInfo`.
6. POST /invocations with a generate body answers a list of GenerateResponse (`compat_generate` wraps it
   "to match api-inference"), as POST / documents.
7. POST /chat_tokenize answers 422 ErrorResponse when the chat cannot be templated (`try_into_generate`'s
   template and tool errors), besides the documented 404.
8. POST /vertex, which TGI documents only in its `google` build (vertex.rs `utoipa::path`), is added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[1] / "data" / "tgi-openapi-v3.3.7.json"
SSE = "text/event-stream"
JSON = "application/json"
PLAIN = {"text/plain": {"schema": {"type": "string"}}}
# the routes whose event streams may be OpenAI's (error events of their own shape, `data: [DONE]` at the end)
OPENAI_STREAMS = {"/v1/chat/completions", "/v1/completions", "/invocations"}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
OPENAI_ERROR_EVENT = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "http_status_code"],
            "properties": {"message": {"type": "string"}, "http_status_code": {"type": "integer"}},
        }
    },
}
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child)


def _exclusive_bounds_as_flags(document: dict[str, Any]) -> None:
    for node in _walk(document):
        for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool):
                node[bound] = value
                node[keyword] = True


def _drop_mistyped_examples(document: dict[str, Any]) -> None:
    for node in _walk(document):
        kinds = JSON_TYPES.get(node.get("type")) if isinstance(node.get("type"), str) else None
        if kinds and "example" in node:
            example = node["example"]
            bool_mismatch = isinstance(example, bool) and node["type"] != "boolean"
            if not isinstance(example, kinds) or bool_mismatch:
                del node["example"]


def _event_schema(payload: dict[str, Any], openai: bool) -> dict[str, Any]:
    events = [payload, ERROR_REF, OPENAI_ERROR_EVENT] if openai else [payload, ERROR_REF]
    json_data = {"type": "string", "contentMediaType": JSON, "contentSchema": {"anyOf": events}}
    data = {"anyOf": [json_data, {"type": "string", "enum": ["[DONE]"]}]} if openai else json_data
    return {"type": "object", "required": ["data"], "properties": {"data": data}}


def _sse_events_as_json(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                media = response.get("content", {}).get(SSE)
                if media and "schema" in media:
                    media["schema"] = _event_schema(media["schema"], path in OPENAI_STREAMS)
                    media.pop("example", None)


def _axum_json_rejections(document: dict[str, Any]) -> None:
    for operations in document["paths"].values():
        for operation in operations.values():
            if JSON not in operation.get("requestBody", {}).get("content", {}):
                continue
            responses = operation["responses"]
            for status, description in (("400", "Not JSON"), ("413", "Too large"), ("415", "Not JSON")):
                responses.setdefault(status, {"description": description, "content": dict(PLAIN)})
            invalid = responses.setdefault("422", {"description": "Input validation error", "content": {}})
            invalid["content"].update(PLAIN)


def _vertex(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    schemas["GenerateVertexInstance"] = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {"type": "string", "example": "What is Deep Learning?"},
            "parameters": {
                "allOf": [{"$ref": "#/components/schemas/GenerateParameters"}],
                "nullable": True,
            },
        },
    }
    schemas["VertexInstance"] = {
        "oneOf": [
            {"$ref": "#/components/schemas/GenerateVertexInstance"},
            {"$ref": "#/components/schemas/ChatRequest"},
        ]
    }
    schemas["VertexRequest"] = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "items": {"$ref": "#/components/schemas/VertexInstance"}}
        },
    }
    schemas["VertexResponse"] = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {"type": "string"}}},
    }
    generate_errors = document["paths"]["/generate"]["post"]["responses"]
    document["paths"]["/vertex"] = {
        "post": {
            "tags": ["Text Generation Inference"],
            "summary": "Generate tokens from Vertex request",
            "operationId": "vertex_compatibility",
            "requestBody": {
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/VertexRequest"}}},
                "required": True,
            },
            "responses": {
                "200": {
                    "description": "Generated Text",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/VertexResponse"}}},
                },
                **{status: generate_errors[status] for status in ("422", "424", "429", "500")},
            },
        }
    }


def tgi_openapi() -> dict[str, Any]:
    """TGI v3.3.7's openapi.json with the corrections listed in this module's docstring."""
    document = json.loads(SOURCE.read_text())
    paths = document["paths"]
    _vertex(document)
    _exclusive_bounds_as_flags(document)
    _drop_mistyped_examples(document)
    _sse_events_as_json(document)
    models = paths["/v1/models"]["get"]["responses"]["200"]["content"][JSON]
    models["schema"] = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/ModelInfo"}},
        },
    }
    sagemaker = document["components"]["schemas"]["SagemakerResponse"]["oneOf"]
    sagemaker[0] = {"type": "array", "items": sagemaker[0]}
    paths["/chat_tokenize"]["post"]["responses"]["422"] = {
        "description": "Chat template or tool error",
        "content": {JSON: {"schema": ERROR_REF}},
    }
    _axum_json_rejections(document)
    return document
