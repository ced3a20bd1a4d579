"""A tool grammar's output turned back into OpenAI tool calls, as TGI v3.3.7 does (router/src/chat.rs).

The model writes `{"function": {"_name": NAME, ...arguments}}`. Answered whole, that becomes one tool call
(id "0", arguments the rest of the object as compact JSON); `no_tool` means "answer in text", and the route
then generates again without tools. Streamed, `ToolCallStream` follows TGI's `ChatState`: it buffers the text
until the function's name can be read, sends the name with arguments `{`, then each token as an arguments
delta, and the token that closes the call without its last `}`. What follows the call is not sent.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from tgi_async.api.openai_requests import FunctionDefinition, Message, Tool, ToolChoice, compact_json
from tgi_async.api.openai_responses import FunctionCall, ToolCallOutput
from tgi_async.api.protocol import Grammar
from tgi_async.scheduler.request import InferError

NO_TOOL_NAME = "no_tool"


# ---- the grammar -----------------------------------------------------------------------------------------


NO_TOOL_FUNCTION = Tool(
    type="function",
    function=FunctionDefinition(
        name=NO_TOOL_NAME,
        description="Open ended response with no specific tool selected",
        arguments={"type": "object"},
    ),
)


def tool_grammar(tools: list[Tool], choice: ToolChoice) -> tuple[list[Tool], Grammar] | None:
    """TGI's `ToolGrammar::apply`: the tools offered to the model and the JSON grammar of a call.

    None when no tool is to be used (`tool_choice: none`). `auto` adds TGI's `no_tool` function.
    Raises `InferError` (`tool_error`) for a chosen function that is not among `tools`.
    """
    if choice.kind == "none":
        return None
    if choice.kind == "function":
        chosen = [tool for tool in tools if tool.function.name == choice.name]
        if not chosen:
            raise InferError(f"Tool with name {choice.name} not found", "tool_error")
        tools = chosen[:1]
    elif choice.kind == "auto":
        tools = [*tools, NO_TOOL_FUNCTION]
    if not tools:
        return None
    functions = {}
    for tool in tools:
        arguments = tool.function.arguments
        properties: dict[str, Any] = {"_name": {"type": "string", "const": tool.function.name}}
        required: list[Any] = ["_name"]
        schema: dict[str, Any] = {"description": tool.function.description or ""}
        if isinstance(arguments, dict):
            if isinstance(arguments.get("properties"), dict):
                properties.update(arguments["properties"])
            if isinstance(arguments.get("required"), list):
                required.extend(arguments["required"])
            schema["additionalProperties"] = arguments.get("additionalProperties") == "true"
        schema["properties"] = properties
        schema["required"] = required
        functions[tool.function.name] = schema
    refs = [{"$ref": f"#/$functions/{tool.function.name}"} for tool in tools]
    # NOTE: beyond TGI, `function` is required: TGI's schema leaves it optional, so its grammar also allows
    # `{}`, which TGI then answers with 422 "Failed to parse generated text" (1 in 5 from a small model).
    schema = {"$functions": functions, "properties": {"function": {"anyOf": refs}}, "required": ["function"]}
    return tools, Grammar(type="json", value=schema)


# ---- parsing -------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid number {name}")  # serde_json reads no NaN / Infinity


def _call(text: str) -> tuple[str, dict[str, Any]]:
    """TGI's `Call`: `{"function": {"_name": str, ...}}` (other keys ignored) as (name, arguments)."""
    value = json.loads(text, parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise ValueError("invalid type: expected struct Call")
    function = value.get("function")
    if not isinstance(function, dict):
        raise ValueError("missing field `function`" if function is None else "invalid type: expected a map")
    name = function.get("_name")
    if not isinstance(name, str):
        raise ValueError("missing field `_name`" if name is None else "invalid type: expected a string")
    return name, {key: item for key, item in function.items() if key != "_name"}


def parse_output(generated_text: str) -> list[ToolCallOutput] | None:
    """The tool call in a whole answer, or None for `no_tool`; `InferError` (tool_error) if unreadable."""
    try:
        name, arguments = _call(generated_text)
    except ValueError as exc:
        message = f"Failed to parse generated text: {exc} {json.dumps(generated_text, ensure_ascii=False)}"
        raise InferError(message, "tool_error") from None
    if name == NO_TOOL_NAME:
        return None
    return [ToolCallOutput(id="0", function=FunctionCall(name=name, arguments=compact_json(arguments)))]


_USIZE = re.compile(r"\+?[0-9]+")


def next_tool_call_id(messages: list[Message]) -> str:
    """One more than the largest numeric tool call id so far ("0" if none), or a UUID if an id is not a
    number (TGI's `next_tool_call_id`)."""
    next_id = 0
    for message in messages:
        for call in message.tool_calls or []:
            if not _USIZE.fullmatch(call.id) or int(call.id) >= 2**64 - 1:
                return str(uuid.uuid4())
            next_id = max(next_id, int(call.id) + 1)
    return str(next_id)


# ---- streaming -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one streamed token shows the client: text content, or a tool call's arguments (and name)."""

    kind: Literal["content", "tool"]
    text: str
    name: str | None = None


NO_TOOL: Literal["no_tool"] = "no_tool"


def _rstrip_call_end(text: str) -> str:
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] in ",}"):
        end -= 1
    return text[:end]


def _parses(text: str) -> tuple[str, dict[str, Any]] | None:
    try:
        return _call(text)
    except ValueError:
        return None


class ToolCallStream:
    """TGI's `ChatState` for a tool grammar's stream, with its separator fixed (see `_arguments`)."""

    def __init__(self) -> None:
        self.state: Literal["buffering", "separator", "arguments", "done"] = "buffering"
        self.text = ""

    def push(self, text: str, special: bool) -> list[StreamDelta] | Literal["no_tool"]:
        """The deltas for the next token (`text`), or `NO_TOOL` when the model chose not to call a tool."""
        self.text += text
        if self.state == "done":
            return []  # NOTE: as in TGI, nothing after the call is sent (not even EOS's finish_reason)
        if self.state == "buffering":
            partial = _rstrip_call_end(self.text)
            call = _parses(partial + "}}")
            if call is None:
                return []
            if call[0] == NO_TOOL_NAME:
                return NO_TOOL
            self.state = "separator"
            return [StreamDelta("tool", "{" + self._arguments(self.text[len(partial) :]), name=call[0])]
        if special:
            return [StreamDelta("content", "")]  # TGI: a special token inside a call is empty content
        return [StreamDelta("tool", self._arguments(text))]

    def _arguments(self, piece: str) -> str:
        """`piece` of the function object as a piece of the arguments object.

        NOTE: TGI sends the text after the name as is, so its arguments start `{,` (invalid JSON) whenever
        the name's closing quote and the comma after it are separate tokens; here that comma and the space
        around it are dropped, so the deltas always add up to the arguments' JSON object."""
        if self.state == "separator":
            piece = piece.lstrip()
            if piece.startswith(","):
                piece, self.state = piece[1:], "arguments"
            elif piece:
                self.state = "arguments"
        if _parses(self.text) is not None:
            self.state = "done"
            piece = piece.rstrip()
            piece = piece[:-1] if piece.endswith("}") else piece  # the end of `{"function": ...}`
        return piece
