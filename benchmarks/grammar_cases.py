"""Grammars for the constrained-decoding benchmarks and tests: TGI's tool grammar, as JSON schema and as the
regex TGI's router derives from it, plus JSON-schema coverage cases (schema, valid and invalid documents)."""

from __future__ import annotations

import json


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    """One function as TGI's ToolGrammar turns a tool into a schema (router/src/infer/tool_grammar.rs)."""
    return {
        "description": description,
        "properties": {"_name": {"type": "string", "const": name}, **properties},
        "required": ["_name", *required],
        "additionalProperties": False,
    }


_FORMAT = {"type": "string", "enum": ["celsius", "fahrenheit"]}
# NOTE: what TGI 3.3.7's router builds for two tools with tool_choice "auto" (the no_tool entry included).
TOOL_SCHEMA = {
    "$functions": {
        "get_current_weather": _tool(
            "get_current_weather",
            "Get the current weather",
            {"location": {"type": "string"}, "format": _FORMAT},
            ["location", "format"],
        ),
        "get_n_day_weather_forecast": _tool(
            "get_n_day_weather_forecast",
            "Get an N-day weather forecast",
            {
                "location": {"type": "string"},
                "format": _FORMAT,
                "num_days": {"type": "integer", "minimum": 1},
            },
            ["location", "format", "num_days"],
        ),
        "no_tool": _tool("no_tool", "Open ended response with no specific tool selected", {}, []),
    },
    "properties": {
        "function": {
            "anyOf": [
                {"$ref": "#/$functions/get_current_weather"},
                {"$ref": "#/$functions/get_n_day_weather_forecast"},
                {"$ref": "#/$functions/no_tool"},
            ]
        }
    },
}
# NOTE: TOOL_SCHEMA through outlines-core 0.1.14's build_regex_from_schema: what TGI's router sends the shard
# (GRAMMAR_TYPE_REGEX) for a JSON grammar.
TOOL_REGEX = r'\{([ ]?"function"[ ]?:[ ]?(\{[ ]?"_name"[ ]?:[ ]?"get_current_weather"[ ]?,[ ]?"location"[ ]?:[ ]?"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"[ ]?,[ ]?"format"[ ]?:[ ]?("celsius"|"fahrenheit")[ ]?\}|\{[ ]?"_name"[ ]?:[ ]?"get_n_day_weather_forecast"[ ]?,[ ]?"location"[ ]?:[ ]?"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"[ ]?,[ ]?"format"[ ]?:[ ]?("celsius"|"fahrenheit")[ ]?,[ ]?"num_days"[ ]?:[ ]?(-)?(0|[1-9][0-9]*)[ ]?\}|\{[ ]?"_name"[ ]?:[ ]?"no_tool"[ ]?\}))?[ ]?\}'  # noqa: E501
TOOL_DOCUMENT = {
    "function": {
        "_name": "get_n_day_weather_forecast",
        "location": "San Francisco, CA",
        "format": "celsius",
        "num_days": 5,
    }
}
DATE_REGEX = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"

# (name, kind, grammar text, a document the grammar accepts)
PERF_CASES = [
    ("tool schema (JSON)", "json", json.dumps(TOOL_SCHEMA), json.dumps(TOOL_DOCUMENT, separators=(",", ":"))),
    ("tool schema as TGI's regex", "regex", TOOL_REGEX, json.dumps(TOOL_DOCUMENT, separators=(",", ":"))),
    (
        "date-list regex",
        "regex",
        f"{DATE_REGEX}(, {DATE_REGEX})*",
        ", ".join(["2024-02-29", "1999-12-31"] * 6),
    ),
]


def _wrap(schema: dict, extra: dict | None = None) -> dict:
    return {
        "type": "object",
        "properties": {"v": schema},
        "required": ["v"],
        "additionalProperties": False,
        **(extra or {}),
    }


def _docs(*values) -> list[dict]:
    return [{"v": value} for value in values]


_POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}},
    "required": ["x"],
    "additionalProperties": False,
}
# (name, schema, valid documents, invalid documents)
COVERAGE_CASES = [
    (
        "TGI tool grammar ($functions, $ref, anyOf, const, enum)",
        TOOL_SCHEMA,
        [TOOL_DOCUMENT],
        [{"function": {"_name": "x"}}],
    ),
    (
        "$ref to $defs",
        _wrap({"$ref": "#/$defs/p"}, {"$defs": {"p": _POINT}}),
        _docs({"x": 1}),
        _docs({"x": "a"}),
    ),
    (
        "recursive $ref",
        _wrap(
            {"$ref": "#/$defs/n"},
            {
                "$defs": {
                    "n": {
                        "type": "object",
                        "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                        "required": ["k"],
                        "additionalProperties": False,
                    }
                }
            },
        ),
        _docs({"k": [{"k": [{"k": []}]}]}),
        _docs({"k": [{}]}),
    ),
    (
        "nested objects",
        _wrap(
            {"type": "object", "properties": {"a": _POINT}, "required": ["a"], "additionalProperties": False}
        ),
        _docs({"a": {"x": 2}}),
        _docs({"a": {}}),
    ),
    (
        "array items, minItems/maxItems",
        _wrap({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}),
        _docs([1], [1, 2]),
        _docs([], [1, 2, 3]),
    ),
    ("enum", _wrap({"enum": ["red", "green"]}), _docs("red"), _docs("blue")),
    ("const", _wrap({"const": 42}), _docs(42), _docs(41)),
    (
        "string pattern",
        _wrap({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}),
        _docs("AB-123"),
        _docs("ab-123", "AB-1234"),
    ),
    (
        "minLength/maxLength",
        _wrap({"type": "string", "minLength": 2, "maxLength": 3}),
        _docs("ab", "abc"),
        _docs("a", "abcd"),
    ),
    (
        "integer minimum/maximum",
        _wrap({"type": "integer", "minimum": 1, "maximum": 9}),
        _docs(1, 9),
        _docs(0, 10),
    ),
    ("anyOf", _wrap({"anyOf": [{"type": "integer"}, {"type": "null"}]}), _docs(1, None), _docs("a")),
    ("type list", _wrap({"type": ["string", "boolean"]}), _docs("a", True), _docs(1)),
    (
        "optional property",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a"],
            "additionalProperties": False,
        },
        [{"a": 1}, {"a": 1, "b": 2}],
        [{"b": 2}],
    ),
    (
        "additionalProperties schema",
        {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
        [{"q": 1}],
        [{"q": "a"}],
    ),
    (
        "format date-time",
        _wrap({"type": "string", "format": "date-time"}),
        _docs("2024-01-02T03:04:05Z"),
        _docs("yesterday"),
    ),
    (
        "allOf",
        _wrap({"allOf": [{"$ref": "#/$defs/p"}]}, {"$defs": {"p": _POINT}}),
        _docs({"x": 1}),
        _docs({"y": 1}),
    ),
]
