"""OpenAI-compatible request bodies (chat, completions, tools), parsed exactly like TGI v3.3's router
(router/src/lib.rs).

Requests parse strictly like serde and ignore unknown fields (TGI has no `deny_unknown_fields`). The answers'
bodies are in `openai_responses`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypeAliasType

from tgi_async.api.protocol import Grammar

U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]

# TGI's default prompt appended after the tool list when the template does not read `tools`.
DEFAULT_TOOL_PROMPT = (
    "\nGiven the functions available, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt. Respond in the format {name: function name, parameters: "
    "dictionary of argument name and its value}.Do not use variables.\n"
)


class _Request(BaseModel):
    # NOTE: strict like serde (no "1" -> 1 coercion, no NaN); unknown fields are ignored like TGI's.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


# ---- chat messages ---------------------------------------------------------------------------------


class Url(_Request):
    url: str


class TextChunk(_Request):
    type: Literal["text"]
    text: str


class ImageUrlChunk(_Request):
    type: Literal["image_url"]
    image_url: Url


# NOTE: named aliases so the OpenAPI document has TGI's `MessageChunk` and `MessageContent` schemas
MessageChunk = TypeAliasType(
    "MessageChunk", Annotated[TextChunk | ImageUrlChunk, Field(discriminator="type")]
)
MessageContent = TypeAliasType("MessageContent", str | list[MessageChunk])


class FunctionDefinition(_Request):
    description: str | None = None
    name: str
    # NOTE: required like TGI's; OpenAI clients send it as `parameters`.
    arguments: Any = Field(validation_alias=AliasChoices("arguments", "parameters"))

    def template_value(self) -> dict[str, Any]:
        """As TGI hands it to templates and tool prompts: `arguments` serialized as a JSON string."""
        return {"description": self.description, "name": self.name, "arguments": compact_json(self.arguments)}


class ToolCall(_Request):
    id: str
    type: str
    function: FunctionDefinition

    def template_value(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.template_value()}


class Tool(_Request):
    type: str
    function: FunctionDefinition

    def template_value(self) -> dict[str, Any]:
        return {"type": self.type, "function": self.function.template_value()}


class Message(_Request):
    """A chat message: `content` (text or parts), or else `tool_calls` (TGI's untagged MessageBody)."""

    role: str
    content: MessageContent | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_body(self) -> Message:
        if self.content is None and self.tool_calls is None:
            raise ValueError("data did not match any variant of untagged enum MessageBody")
        if self.content is not None:
            self.tool_calls = None  # NOTE: TGI keeps the content body and drops tool_calls when both are set
        return self

    def text(self) -> str:
        """The flat text TGI gives the template: parts joined, images as `![](url)`, tool calls as JSON."""
        if self.content is None:
            return compact_json([call.template_value() for call in self.tool_calls or []])
        if isinstance(self.content, str):
            return self.content
        return "".join(
            chunk.text if isinstance(chunk, TextChunk) else f"![]({chunk.image_url.url})"
            for chunk in self.content
        )


class FunctionName(_Request):
    name: str


class ToolChoice(BaseModel):
    """`auto` (the default, also for null), `none`, `required`, or one function by name."""

    kind: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None

    @classmethod
    def __get_pydantic_json_schema__(cls, _: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """What clients send (see `parse`), not the parsed form."""
        function = {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": handler(FunctionName.__pydantic_core_schema__),
            },
        }
        names = [{"type": "string", "enum": [kind]} for kind in ("auto", "none", "required")]
        return {"oneOf": [*names, function]}

    @classmethod
    def parse(cls, value: Any) -> ToolChoice:
        if value is None:
            return cls()
        if isinstance(value, str):
            if value in ("auto", "none", "required"):
                return cls(kind=value)
            return cls(kind="function", name=value)
        if isinstance(value, dict) and value.get("type") == "function":
            function = value.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                return cls(kind="function", name=function["name"])
        raise ValueError("data did not match any variant of untagged enum ToolTypeDeserializer")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    """TGI's ChatRequest. `n`, `logit_bias` and `tool_prompt` (unless tools are used) have no effect."""

    model: str | None = None
    messages: list[Message]
    frequency_penalty: float | None = None
    logit_bias: list[float] | None = None
    logprobs: bool | None = None
    top_logprobs: U32 | None = None
    max_tokens: U32 | None = Field(
        default=None, validation_alias=AliasChoices("max_tokens", "max_completion_tokens")
    )
    n: U32 | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    stream: bool = False
    seed: U64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Tool] | None = None
    tool_prompt: str | None = None
    tool_choice: ToolChoice = ToolChoice()
    response_format: Grammar | None = None
    stream_options: StreamOptions = StreamOptions()

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: Any) -> ToolChoice:
        return value if isinstance(value, ToolChoice) else ToolChoice.parse(value)

    @field_validator("stream_options", mode="before")
    @classmethod
    def _stream_options(cls, value: Any) -> Any:
        return StreamOptions() if value is None else value

    def generate_parameters(self, grammar: Grammar | None = None) -> dict[str, Any]:
        """TGI's mapping to GenerateParameters (`try_into_generate`), as keyword arguments."""
        do_sample, temperature = sampling(self.temperature)
        return {
            "temperature": temperature,
            # NOTE: TGI's mapping, kept as is: presence_penalty p becomes repetition_penalty p + 2.
            "repetition_penalty": None if self.presence_penalty is None else self.presence_penalty + 2.0,
            "frequency_penalty": self.frequency_penalty,
            "top_p": self.top_p,
            "do_sample": do_sample,
            "max_new_tokens": self.max_tokens,
            "stop": list(self.stop or []),
            "details": True,
            "decoder_input_details": False,
            "seed": self.seed,
            "top_n_tokens": self.top_logprobs,
            "grammar": grammar,
            "adapter_id": adapter_id(self.model),
        }


# NOTE: a named alias so the OpenAPI document has TGI's `Prompt` schema
Prompt = TypeAliasType("Prompt", list[str])


class CompletionRequest(_Request):
    """TGI's CompletionRequest; `prompt` is one string or a non-empty list of strings."""

    model: str | None = None
    prompt: Prompt
    max_tokens: U32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    seed: U64 | None = None
    suffix: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and not value:
            raise ValueError("Empty array detected. Do not use an empty array for the prompt.")
        return value

    def generate_parameters(self) -> dict[str, Any]:
        do_sample, temperature = sampling(self.temperature)
        return {
            "temperature": temperature,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "top_p": self.top_p,
            "do_sample": do_sample,
            "max_new_tokens": self.max_tokens,
            "stop": list(self.stop or []),
            "details": True,
            # NOTE: TGI asks prompt logprobs for non-streamed completions but never returns them: not asked.
            "decoder_input_details": False,
            "seed": self.seed,
            "adapter_id": adapter_id(self.model),
        }


def sampling(temperature: float | None) -> tuple[bool, float | None]:
    """TGI: temperature 0 means greedy (and no temperature); anything else, including absent, samples."""
    if temperature == 0.0:
        return False, None
    return True, temperature


def adapter_id(model: str | None) -> str | None:
    return None if model in (None, "tgi") else model


def compact_json(value: Any) -> str:
    """serde_json's `to_string`: no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
