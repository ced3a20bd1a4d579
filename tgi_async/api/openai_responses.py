"""OpenAI-compatible response and stream bodies, shaped exactly like TGI v3.3's router (router/src/lib.rs).

Responses serialize with `model_dump_json()` to TGI's bytes: fields in TGI's order, the `object` tag
first, compact separators, `null` for absent optionals and for NaN. Logprobs must be given through
`protocol.f32()` so they print like TGI's `f32` values (`-0.34`, not `-0.3400000035762787`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tgi_async.api.protocol import SimpleToken
from tgi_async.scheduler.request import FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float | None


class Logprob(BaseModel):
    token: str
    logprob: float | None
    top_logprobs: list[TopLogprob]


class Logprobs(BaseModel):
    content: list[Logprob]


class OutputMessage(BaseModel):
    role: str = "assistant"
    content: str


class FunctionCall(BaseModel):
    description: str | None = None  # NOTE: TGI's FunctionDefinition: always `null` in answers
    name: str
    arguments: str  # the arguments object as a JSON string


class ToolCallOutput(BaseModel):
    id: str
    type: str = "function"
    function: FunctionCall


class ToolCallMessage(BaseModel):
    role: str = "assistant"
    tool_calls: list[ToolCallOutput]


class DeltaFunction(BaseModel):
    name: str | None
    arguments: str


class DeltaToolCall(BaseModel):
    index: int = 0
    id: str
    type: str = "function"
    function: DeltaFunction


class ToolCallDelta(BaseModel):
    role: str = "assistant"
    tool_calls: list[DeltaToolCall]


class ChatCompletionComplete(BaseModel):
    index: int = 0
    message: OutputMessage | ToolCallMessage
    logprobs: Logprobs | None
    finish_reason: str


class ChatCompletion(BaseModel):
    object: Literal["chat.completion"] = "chat.completion"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionComplete]
    usage: Usage


class ChatCompletionChoice(BaseModel):
    index: int = 0
    delta: OutputMessage | ToolCallDelta
    logprobs: Logprobs | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class CompletionComplete(BaseModel):
    index: int
    text: str
    logprobs: list[float] | None = None
    finish_reason: str


class CompletionChunk(BaseModel):
    """A streamed token of /v1/completions (TGI's `Chunk`: `finish_reason` is `""`)."""

    object: Literal["text_completion"] = "text_completion"
    id: str = ""
    created: int
    choices: list[CompletionComplete]
    model: str
    system_fingerprint: str


class CompletionFinal(BaseModel):
    object: Literal["text_completion"] = "text_completion"
    id: str = ""
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionComplete]
    usage: Usage


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


class ModelsInfo(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


class ChatTokenizeResponse(BaseModel):
    tokenize_response: list[SimpleToken]
    templated_text: str


class ApiError(BaseModel):
    message: str
    http_status_code: int = 422


class OpenAIErrorEvent(BaseModel):
    """An error inside an OpenAI-style stream (TGI sends 422 here whatever the error was)."""

    error: ApiError


# ---- helpers -----------------------------------------------------------------------------------------


def finish_reason(reason: FinishReason, use_stop: bool = True) -> str:
    """TGI's `FinishReason::format`: only `eos_token` becomes `stop`; `stop_sequence` stays as is."""
    return "stop" if use_stop and reason == "eos_token" else reason
