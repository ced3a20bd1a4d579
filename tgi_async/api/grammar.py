"""Grammar validation and compilation as TGI v3.3.7's router does it (router/src/validation.rs).

A JSON grammar (`json`, `json_object`, `json_schema`) must be a JSON Schema valid under the draft 2020-12
meta-schema (checked by jsonschema-rs: the Rust crate TGI uses, so its error texts) with a `properties`
field; the router then compiles it to a regex with outlines-core at the revision TGI pins (0.1.14), and
every shard receives `GRAMMAR_TYPE_REGEX` with that regex, exactly as from TGI's router. A `regex` grammar
is passed through; beyond TGI it must also parse as the shards' regex dialect (interegular), because a regex
a shard cannot compile fails every request of its batch there. Results are cached by grammar text: an agent
sends the same tools with every request.

NOTE: only parsed, not turned into an automaton as the shards do: that takes 5-40 ms of pure Python (the
event loop's time, GIL held) for everyday regexes, against ~0.5 ms to parse, which catches syntax errors and
unsupported constructs; a compiled tool schema costs ~0.15 ms.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import interegular
import jsonschema_rs
from outlines_core.fsm.json_schema import build_regex_from_schema

from tgi_async.api.protocol import Grammar
from tgi_async.scheduler.request import InferError

META_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
CACHE_SIZE = 256  # valid grammars remembered with their regex


def _invalid(message: str) -> InferError:
    return InferError(message, "validation")


@functools.cache
def _meta_validator() -> jsonschema_rs.Draft202012Validator:
    # NOTE: TGI checks against draft 2020-12 whatever the schema's own `$schema` says.
    return jsonschema_rs.Draft202012Validator({"$ref": META_SCHEMA_2020_12})


def grammar_regex(grammar: Grammar, disabled: bool) -> str:
    """The regex every shard is sent for `grammar`, or `InferError` with TGI's validation message."""
    if disabled:
        raise _invalid("grammar is not supported")
    if grammar.type == "regex":
        return _checked_regex(grammar.value)
    value = grammar.value["schema"] if grammar.type == "json_schema" else grammar.value
    # NOTE: keyed by the JSON text, key order included (it orders the regex)
    return _schema_regex(json.dumps(value, ensure_ascii=False), grammar.type == "json_schema")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _schema_regex(text: str, is_schema: bool) -> str:
    schema = json.loads(text) if is_schema else _json_value(json.loads(text))
    try:
        _meta_validator().validate(schema)
    except jsonschema_rs.ValidationError as exc:
        raise _invalid(f"grammar is not valid: {exc.message}") from None
    if not isinstance(schema, dict) or "properties" not in schema:
        raise _invalid("grammar is not valid: Grammar must have a 'properties' field")
    try:
        return build_regex_from_schema(json.dumps(schema, ensure_ascii=False))
    except ValueError as exc:
        raise _invalid(f"cannot compile regex from schema: {exc}") from None


def _json_value(value: Any) -> Any:
    """TGI's `GrammarType::Json` value: an object, or a string holding JSON; anything else is unsupported."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _invalid(f"grammar is not valid: {exc}") from None
    if not isinstance(value, dict):
        raise _invalid("grammar is not supported")
    return value


@functools.lru_cache(maxsize=CACHE_SIZE)
def _checked_regex(regex: str) -> str:
    try:
        interegular.parse_pattern(regex)
    except Exception as exc:  # interegular raises several types, some without a message
        raise _invalid(f"grammar is not valid: {exc or type(exc).__name__}") from None
    return regex
