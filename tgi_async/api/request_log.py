"""One log line per request, as TGI's router writes it: `Success` at INFO, or the error at ERROR, inside the
handler's span (`generate`, `generate_stream`, `completions`, `chat_completions`) with TGI's span fields:
`parameters` (Rust's Debug of GenerateParameters), then, on success, total_time, validation_time, queue_time,
inference_time, time_per_token (Rust's Debug of a Duration) and seed (`Some(n)`/`None`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from tgi_async.api import protocol as p
from tgi_async.api.errors import error_message
from tgi_async.logs import Debug, LogSpan
from tgi_async.scheduler.request import InferError

log = logging.getLogger("tgi_async.router.server")

# TGI's GenerateParameters, in its field order (router/src/lib.rs)
_FIELDS = (
    "best_of", "temperature", "repetition_penalty", "frequency_penalty", "top_k", "top_p", "typical_p",
    "do_sample", "max_new_tokens", "return_full_text", "stop", "truncate", "watermark", "details",
    "decoder_input_details", "seed", "top_n_tokens", "grammar", "adapter_id",
)  # fmt: skip
_PLAIN = {"do_sample", "watermark", "details", "decoder_input_details"}  # bool, not Option<bool>
_F32 = {"temperature", "repetition_penalty", "frequency_penalty", "top_p", "typical_p"}
_VALIDATION_PREFIX = "Input validation error: "


def rust_duration(seconds: float) -> str:
    """`{:?}` of a Rust Duration: the largest unit below the value, every significant digit (1.5ms, 12µs)."""
    nanos = max(0, round(seconds * 1e9))
    whole, rest = divmod(nanos, 10**9)
    if whole:
        unit, digits = "s", 9
    elif rest >= 10**6:
        (whole, rest), unit, digits = divmod(rest, 10**6), "ms", 6
    elif rest >= 10**3:
        (whole, rest), unit, digits = divmod(rest, 10**3), "µs", 3
    else:
        whole, rest, unit, digits = rest, 0, "ns", 0
    fraction = f"{rest:0{digits}d}".rstrip("0") if digits else ""
    return f"{whole}.{fraction}{unit}" if fraction else f"{whole}{unit}"


def _debug(name: str, value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        inner = "true" if value else "false"
    elif name in _F32:
        inner = repr(p.f32(value))
    elif isinstance(value, str):
        inner = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
    elif isinstance(value, p.BaseModel):
        dumped = value.model_dump(mode="json")
        kind = str(dumped.get("type", "")).capitalize()
        inner = f"{kind}({json.dumps(dumped.get('value'), ensure_ascii=False)})"
    else:
        inner = str(value)
    return inner if name in _PLAIN else f"Some({inner})"


def parameters_debug(parameters: p.GenerateParameters) -> str:
    """`{:?}` of TGI's GenerateParameters for these parameters."""
    fields = ", ".join(f"{name}: {_debug(name, getattr(parameters, name))}" for name in _FIELDS)
    return "GenerateParameters { " + fields + " }"


def request_span(name: str, parameters: p.GenerateParameters) -> LogSpan:
    return LogSpan(name, {"parameters": Debug(parameters_debug(parameters))})


def log_success(span: LogSpan, timings: Any, seed: int | None) -> None:
    """`Success` with the request's timings (a generation.Timings) recorded on its span."""
    span.record(
        total_time=rust_duration(timings.total),
        validation_time=rust_duration(timings.validation),
        queue_time=rust_duration(timings.queue),
        inference_time=rust_duration(timings.inference),
        time_per_token=rust_duration(timings.per_token),
        seed="None" if seed is None else f"Some({seed})",
    )
    log.info("Success", extra={"spans": [span]})


def log_failure(span: LogSpan, error: InferError) -> None:
    """The error as TGI logs it: a validation error without its HTTP prefix; overloaded as the semaphore's."""
    if error.error_type == "overloaded":
        message = "no permits available"
    else:
        message = error_message(error).removeprefix(_VALIDATION_PREFIX)
    log.error("%s", message, extra={"spans": [span]})
