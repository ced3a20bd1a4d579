"""Request bodies read the way axum's `Json` extractor reads them in TGI's router.

Order and answers (all plain text, `text/plain; charset=utf-8`, not TGI's JSON error shape):
  content type not `application/json` (or `+json`)  -> 415 UNSUPPORTED_MEDIA_TYPE
  body over --payload-limit                          -> 413 PAYLOAD_TOO_LARGE (middleware.BodyLimit)
  not JSON                                           -> 400 SYNTAX_PREFIX + serde's message
  JSON of the wrong shape                            -> 422 DATA_PREFIX + "<path>: " + serde's message
Messages follow serde_json's wording; serde's "at line L column C" suffix is kept only where the JSON
parser reports it (syntax errors).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from tgi_async.api.protocol import RUST_TYPES

M = TypeVar("M", bound=BaseModel)

SYNTAX_PREFIX = "Failed to parse the request body as JSON: "
DATA_PREFIX = "Failed to deserialize the JSON body into the target type: "
UNSUPPORTED_MEDIA_TYPE = "Expected request with `Content-Type: application/json`"
PAYLOAD_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"
# how serde names our models that are not plain Rust structs in TGI
SERDE_NAMES = {"Grammar": "adjacently tagged enum GrammarType"}


class BodyRejection(HTTPException):
    """A request body the route cannot use; rendered as axum's plain-text rejection.

    NOTE: an HTTPException so that FastAPI re-raises it untouched when it happens while FastAPI itself
    reads a body (e.g. the payload limit tripping inside a route with a pydantic body parameter).
    """

    def __init__(self, status: int, text: str):
        super().__init__(status_code=status, detail=text)
        self.status = status
        self.text = text


def is_json_content_type(value: str | None) -> bool:
    """`application/json`, `application/json; charset=...` or `application/<x>+json` (mime rules)."""
    if not value:
        return False
    essence = value.split(";", 1)[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    if kind != "application" or not subtype or " " in subtype:
        return False
    return subtype == "json" or subtype.endswith("+json")


async def read_json(request: Request, model: type[M]) -> M:
    """Parse the request body as `model`, or raise `BodyRejection` with TGI's status and text."""
    if not is_json_content_type(request.headers.get("content-type")):
        raise BodyRejection(415, UNSUPPORTED_MEDIA_TYPE)
    body = await request.body()
    return parse_json(body, model)


def parse_json(body: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(body, context={"from_client": True})
    except ValidationError as exc:
        raise rejection_from_errors(exc.errors(include_url=False)) from None


def rejection_from_errors(errors: list[Any]) -> BodyRejection:
    """The rejection serde would have produced for the first of these pydantic errors."""
    if not errors:
        return BodyRejection(422, DATA_PREFIX + "invalid body")
    syntax = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if syntax is not None:
        message = str(syntax.get("ctx", {}).get("error") or syntax.get("msg", ""))
        return BodyRejection(400, SYNTAX_PREFIX + message.removeprefix("Invalid JSON: "))
    non_finite = next((e for e in errors if e.get("type") == "finite_number"), None)
    if non_finite is not None:
        return BodyRejection(400, SYNTAX_PREFIX + "expected value")
    # serde reports a wrong value as it reads it, a missing field only at the end of its object
    first = next((e for e in errors if e.get("type") != "missing"), errors[0])
    return BodyRejection(422, DATA_PREFIX + serde_message(first))


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if part == "body":  # FastAPI's prefix for body parameters
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _unexpected(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        text = repr(value)
        return f"floating point `{text if '.' in text or 'e' in text else text + '.0'}`"
    if isinstance(value, str):
        return "string " + json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "value"


def _expected(error: dict[str, Any]) -> str:
    loc = [p for p in error.get("loc", ()) if isinstance(p, str)]
    field = loc[-1] if loc else ""
    kind = str(error.get("type", ""))
    if kind.startswith(("int_", "float_", "greater_than", "less_than")) and field in RUST_TYPES:
        return RUST_TYPES[field]
    if kind.startswith("string"):
        return "a string"
    if kind.startswith("bool"):
        return "a boolean"
    if kind.startswith(("list", "tuple")):
        return "a sequence"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        name = str(error.get("ctx", {}).get("class_name", ""))
        return SERDE_NAMES.get(name, f"struct {name}") if name else "a map"
    return str(error.get("msg", "a valid value"))


def serde_message(error: dict[str, Any]) -> str:
    """serde_json's wording for one pydantic error, prefixed by its path like serde_path_to_error."""
    kind = str(error.get("type", ""))
    loc = tuple(error.get("loc", ()))
    value = error.get("input")
    if kind == "missing":
        path, text = _path(loc[:-1]), f"missing field `{loc[-1] if loc else ''}`"
    elif kind == "serde_message":  # a validator's own serde-worded text
        path, text = _path(loc), str(error.get("msg", ""))
    elif kind.startswith(("greater_than", "less_than")) and isinstance(value, int):
        path, text = _path(loc), f"invalid value: {_unexpected(value)}, expected {_expected(error)}"
    elif kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "`").replace(" or ", ", ")
        path, text = _path(loc), f"unknown variant `{value}`, expected one of {expected}"
    else:
        path, text = _path(loc), f"invalid type: {_unexpected(value)}, expected {_expected(error)}"
    return f"{path}: {text}" if path else text
