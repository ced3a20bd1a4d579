"""Our OpenAPI document against TGI v3.3.7's (tests/data/tgi-openapi-v3.3.7.json); /docs offline; HEAD.

The document is built in process (`print_schema()`, as `tgi-async router print-schema` does); the /docs and
HEAD checks ask a real router.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tgi_async.api.app import print_schema

TGI_DOCUMENT = Path(__file__).resolve().parents[1] / "data" / "tgi-openapi-v3.3.7.json"
REF = "#/components/schemas/"

# Each deliberate difference from TGI's document, with its reason.
EXTRA_OPERATIONS = {
    # TGI documents /vertex only in its `google` build; we always serve it.
    ("post", "/vertex"),
}
# (and the schemas that only EXTRA_OPERATIONS refer to)
EXTRA_SCHEMAS = {
    # /v1/models answers {"object": "list", "data": [ModelInfo]} (so does TGI; its document says ModelInfo)
    "ModelsInfo",
    # MessageChunk's two variants, as schemas of their own (TGI writes them inline)
    "TextChunk",
    "ImageUrlChunk",
    # An answer's tool call: TGI's document reuses the request's ToolCall / FunctionDefinition (arguments of
    # any JSON); what TGI sends, and we send, is `arguments` as a string and `description: null`.
    "ToolCallOutput",
    "FunctionCall",
}
MISSING_SCHEMAS = {
    # TGI's oneOf unions of a text or tool-call message: ours are written inline where they are used.
    "OutputMessage",
    "ChatCompletionDelta",
    # Our Message is one object (role, name, and `content` or `tool_calls`), not TGI's allOf of a body.
    "MessageBody",
}
# (method, path, status, media type) -> (ours, TGI's) response schema where they differ, with the reason.
RESPONSE_DIFFERENCES = {
    # see ModelsInfo above
    ("get", "/v1/models", "200", "application/json"): ("ModelsInfo", "ModelInfo"),
}


def _tgi() -> dict[str, Any]:
    return json.loads(TGI_DOCUMENT.read_text())


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return json.loads(print_schema())


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def _schema_label(schema: dict[str, Any]) -> str:
    """A response schema as a short label: a $ref's name, `[Name]` for an array of refs, else its type."""
    if "$ref" in schema:
        return schema["$ref"].removeprefix(REF)
    if schema.get("type") == "array" and "$ref" in schema.get("items", {}):
        return "[" + schema["items"]["$ref"].removeprefix(REF) + "]"
    return schema.get("type", "?")


def _responses(op: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """(status, media type) -> (description, schema label); a status without content has media type ''."""
    out = {}
    for status, response in op["responses"].items():
        content = response.get("content") or {"": {"schema": {}}}
        for media, body in content.items():
            out[status, media] = (response["description"], _schema_label(body.get("schema", {})))
    return out


def test_paths_methods_and_operation_ids_are_tgis(ours):
    tgi, mine = _operations(_tgi()), _operations(ours)
    assert set(mine) - set(tgi) == EXTRA_OPERATIONS
    assert set(tgi) <= set(mine)
    for key, op in tgi.items():
        assert mine[key]["operationId"] == op["operationId"], key
        assert mine[key]["tags"] == op["tags"], key
        assert mine[key]["summary"] == op["summary"], key


def test_request_bodies_are_tgis(ours):
    mine = _operations(ours)
    for key, op in _operations(_tgi()).items():
        assert ("requestBody" in mine[key]) == ("requestBody" in op), key
        if "requestBody" in op:
            assert mine[key]["requestBody"] == op["requestBody"], key


def test_responses_statuses_media_types_and_schemas_are_tgis(ours):
    mine = _operations(ours)
    for (method, path), op in _operations(_tgi()).items():
        expected = _responses(op)
        for (d_method, d_path, status, media), (ours_name, tgi_name) in RESPONSE_DIFFERENCES.items():
            if (d_method, d_path) == (method, path):
                description, label = expected[status, media]
                assert label == tgi_name
                expected[status, media] = (description, ours_name)
        assert _responses(mine[method, path]) == expected, (method, path)


def _referred(node: Any, schemas: dict[str, Any], seen: set[str]) -> set[str]:
    """The schema names `node` refers to, transitively."""
    for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(node)):
        name = ref.removeprefix(REF)
        if name not in seen:
            seen.add(name)
            _referred(schemas[name], schemas, seen)
    return seen


def test_component_schema_names_are_tgis(ours):
    schemas, tgi_names = ours["components"]["schemas"], set(_tgi()["components"]["schemas"])
    operations = _operations(ours)
    documented = {
        name
        for key, op in operations.items()
        if key not in EXTRA_OPERATIONS
        for name in _referred(op, schemas, set())
    }
    only_extra = {name for key in EXTRA_OPERATIONS for name in _referred(operations[key], schemas, set())}
    names = set(schemas) - (only_extra - documented)
    assert names - tgi_names == EXTRA_SCHEMAS
    assert tgi_names - names == MISSING_SCHEMAS


def test_every_ref_resolves(ours):
    text = json.dumps(ours)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', text))
    assert refs, "no $ref at all"
    schemas = ours["components"]["schemas"]
    assert {ref for ref in refs if not ref.startswith(REF) or ref.removeprefix(REF) not in schemas} == set()
    assert "$defs" not in text  # pydantic's local definitions all moved to components


def test_info_is_tgis(ours):
    tgi = _tgi()
    assert ours["tags"] == tgi["tags"]
    assert {k: v for k, v in ours["info"].items() if k != "version"} == {
        k: v for k, v in tgi["info"].items() if k != "version"
    }


@pytest.fixture(scope="module")
def http(tgi_url: str):
    with httpx.Client(base_url=tgi_url, timeout=60) as client:
        yield client


def test_docs_are_served_offline(http):
    page = http.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url:)\s*=?\s*['"]([^'"]+)['"]""", page.text)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls), urls
    for url in urls:
        assert not urlsplit(url).netloc, f"/docs loads {url} from another host"
        asset = http.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert http.get("/api-doc/openapi.json").json()["paths"]


@pytest.mark.parametrize("path", ["/health", "/metrics", "/info", "/api-doc/openapi.json"])
def test_head_on_get_routes(http, path):
    get, head = http.get(path), http.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers.get("content-type") == get.headers.get("content-type")
