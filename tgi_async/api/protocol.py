"""TGI's HTTP JSON types (router/src/lib.rs), field for field: names, order, defaults, null vs absent.

Requests parse strictly like serde does (no string-to-number coercion, `null` only where TGI has an
`Option`). Responses serialize like serde_json: compact, raw UTF-8, non-finite floats as `null`, fields
that TGI skips when empty (`top_tokens`, `best_of_sequences`, `details` on /generate) left out.
Float fields that TGI holds as `f32` go through `f32()` so clients parse the very same numbers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

_F32_MAX = float(np.finfo(np.float32).max)
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

U32 = Annotated[int, Field(ge=0, le=U32_MAX)]
U64 = Annotated[int, Field(ge=0, le=U64_MAX)]
I32 = Annotated[int, Field(ge=I32_MIN, le=I32_MAX)]
# NOTE: a named alias so the OpenAPI document has TGI's `FinishReason` schema
FinishReason = TypeAliasType("FinishReason", Literal["length", "eos_token", "stop_sequence"])

# Rust types of the integer/float request fields, for serde-style error messages (see body.py).
RUST_TYPES = {
    "best_of": "usize",
    "top_k": "i32",
    "max_new_tokens": "u32",
    "truncate": "usize",
    "seed": "u64",
    "top_n_tokens": "u32",
    "temperature": "f32",
    "repetition_penalty": "f32",
    "frequency_penalty": "f32",
    "top_p": "f32",
    "typical_p": "f32",
}


def f32(value: float | None) -> float | None:
    """`value` as the shortest decimal naming the same f32 (serde_json's output); None if not finite.

    NOTE: numpy prints a float32 as the shortest decimal that round-trips it, as serde_json (ryu) does; one
    call per streamed token, ~5x cheaper than searching the digits here."""
    if value is None or not math.isfinite(value):
        return None
    if abs(value) > _F32_MAX:  # rounds down to the largest f32 or overflows to inf
        with np.errstate(over="ignore"):
            single = np.float32(value)
        if not np.isfinite(single):
            return None
    else:
        single = np.float32(value)
    return float(str(single))


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class JsonSchemaConfig(_Strict):
    """`{"type": "json_schema", "value": {...}}` grammar payload."""

    name: str | None = None
    schema_: Any = Field(alias="schema")


class Grammar(_Strict):
    """An output constraint: `{"type": "json" | "json_object" | "regex" | "json_schema", "value": ...}`."""

    type: Literal["json", "json_object", "regex", "json_schema"]
    value: Any = Field(examples=[{"properties": {"location": {"type": "string"}}}])

    @field_validator("value")
    @classmethod
    def _value_of_its_type(cls, value: Any, info: ValidationInfo) -> Any:
        """serde's checks of the variant's content: a regex is a string, `json_schema` a JsonSchemaConfig."""
        kind = info.data.get("type")
        if kind == "regex" and not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        if kind == "json_schema":
            if not isinstance(value, dict):
                raise PydanticCustomError("model_type", "not a map", {"class_name": "JsonSchemaConfig"})
            if "schema" not in value:
                raise PydanticCustomError("serde_message", "missing field `schema`")
            if value.get("name") is not None and not isinstance(value["name"], str):
                raise PydanticCustomError("serde_message", "name: invalid type, expected a string")
        return value


class GenerateParameters(_Strict):
    """Generation parameters of /generate, /generate_stream and POST / (TGI's `GenerateParameters`)."""

    best_of: Annotated[int, Field(ge=0, le=U64_MAX)] | None = Field(
        None,
        description="Sample best_of sequences and return the one with the highest mean logprob.",
        examples=[1],
    )
    temperature: float | None = Field(None, description="Softmax temperature (> 0).", examples=[0.5])
    repetition_penalty: float | None = Field(
        None, description="Repetition penalty; 1.0 means none (> 0).", examples=[1.03]
    )
    frequency_penalty: float | None = Field(
        None, description="Penalty on a token's frequency in the text so far (-2.0 to 2.0).", examples=[0.1]
    )
    top_k: I32 | None = Field(None, description="Keep the k most probable tokens (> 0).", examples=[10])
    top_p: float | None = Field(None, description="Nucleus sampling mass (0 < top_p < 1).", examples=[0.95])
    typical_p: float | None = Field(
        None, description="Typical decoding mass (0 < typical_p < 1).", examples=[0.95]
    )
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.", examples=[True])
    max_new_tokens: U32 | None = Field(None, description="Most tokens to generate.", examples=[20])
    return_full_text: bool | None = Field(
        None, description="Prepend the prompt to the generated text.", examples=[False]
    )
    stop: list[str] = Field(
        default_factory=list, description="Stop when one of these is generated.", examples=[["photographer"]]
    )
    truncate: Annotated[int, Field(ge=0, le=U64_MAX)] | None = Field(
        None, description="Keep only the last `truncate` prompt tokens."
    )
    watermark: bool = Field(False, description="Watermark the output (arXiv:2301.10226).", examples=[True])
    details: bool = Field(False, description="Return generation details.")
    decoder_input_details: bool = Field(False, description="Return the prompt tokens with their logprobs.")
    seed: U64 | None = Field(None, description="Sampling seed.")
    top_n_tokens: U32 | None = Field(
        None, description="Return the n most probable alternatives per token.", examples=[5]
    )
    grammar: Grammar | None = Field(None, description="Grammar constraining the output.")
    adapter_id: str | None = Field(None, description="LoRA adapter id.")


def default_parameters() -> GenerateParameters:
    """What TGI uses when a request has no `parameters` key at all: note `do_sample` is True there."""
    return GenerateParameters(do_sample=True)


class _ClientRequest(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _internal_fields_are_not_client_settable(cls, data: Any, info: ValidationInfo) -> Any:
        # NOTE: TGI's `add_special_tokens` is `#[serde(skip)]`: a client's JSON never sets it.
        if info.context and info.context.get("from_client") and isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "add_special_tokens"}
        return data


class GenerateRequest(_ClientRequest):
    """Body of /generate, /generate_stream and /tokenize."""

    inputs: str = Field(examples=["My name is Olivier and I"])
    parameters: GenerateParameters = Field(default_factory=default_parameters)
    # internal: False when the inputs already carry special tokens (chat template applied)
    add_special_tokens: SkipJsonSchema[bool] = Field(True, exclude=True)


class CompatGenerateRequest(_ClientRequest):
    """Body of POST /: a GenerateRequest that chooses streaming with `stream`."""

    inputs: str = Field(examples=["My name is Olivier and I"])
    parameters: GenerateParameters = Field(default_factory=default_parameters)
    stream: bool = False

    def to_generate_request(self) -> GenerateRequest:
        return GenerateRequest(inputs=self.inputs, parameters=self.parameters)


def _empty(value: Any) -> bool:
    return not value


class PrefillToken(BaseModel):
    id: int = Field(examples=[0])
    text: str = Field(examples=["test"])
    logprob: float | None = Field(examples=[-0.34])


class Token(BaseModel):
    id: int = Field(examples=[0])
    text: str = Field(examples=["test"])
    logprob: float | None = Field(examples=[-0.34])
    special: bool = Field(examples=[False])


class SimpleToken(BaseModel):
    id: int = Field(examples=[0])
    text: str = Field(examples=["test"])
    start: int = Field(examples=[0])
    stop: int = Field(examples=[2])


class TokenizeResponse(RootModel[list[SimpleToken]]):
    pass


class BestOfSequence(BaseModel):
    generated_text: str = Field(examples=["test"])
    finish_reason: FinishReason
    generated_tokens: int = Field(examples=[1])
    seed: int | None = Field(examples=[42])
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list, exclude_if=_empty)


class Details(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int = Field(examples=[1])
    seed: int | None = Field(examples=[42])
    prefill: list[PrefillToken]
    tokens: list[Token]
    best_of_sequences: list[BestOfSequence] | None = Field(None, exclude_if=lambda v: v is None)
    top_tokens: list[list[Token]] = Field(default_factory=list, exclude_if=_empty)


class GenerateResponse(BaseModel):
    generated_text: str = Field(examples=["test"])
    details: Details | None = Field(None, exclude_if=lambda v: v is None)


class StreamDetails(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int = Field(examples=[1])
    seed: int | None = Field(examples=[42])
    input_length: int = Field(examples=[1])


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token] = Field(default_factory=list, exclude_if=_empty)
    generated_text: str | None = Field(None, examples=["test"])
    details: StreamDetails | None = None


class ErrorResponse(BaseModel):
    error: str
    error_type: str


class Info(BaseModel):
    """GET /info: the served model and the router's limits (TGI v3.3.x field set and order)."""

    model_config = ConfigDict(protected_namespaces=(), extra="allow")

    model_id: str = Field(examples=["bigscience/blomm-560m"])
    model_sha: str | None = Field(None, examples=["e985a63cdc139290c5f700ff1929f0b5942cced2"])
    model_pipeline_tag: str | None = Field(None, examples=["text-generation"])
    max_concurrent_requests: int = Field(examples=[128])
    max_best_of: int = Field(examples=[2])
    max_stop_sequences: int = Field(examples=[4])
    max_input_tokens: int = Field(examples=[1024])
    max_total_tokens: int = Field(examples=[2048])
    validation_workers: int = Field(examples=[2])
    max_client_batch_size: int = Field(examples=[32])
    router: str = Field(examples=["text-generation-router"])
    version: str = Field(examples=["3.3.6-dev0"])
    sha: str | None = Field(None, examples=[None])
    docker_label: str | None = Field(None, examples=[None])


def to_json(model: BaseModel) -> bytes:
    """serde_json's bytes for a response model: compact, raw UTF-8, NaN/inf as null."""
    return model.model_dump_json().encode()
