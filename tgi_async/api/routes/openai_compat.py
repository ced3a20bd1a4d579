"""OpenAI-style routes of TGI's router: /v1/chat/completions, /v1/completions, /v1/models, /chat_tokenize.

Each route is TGI's handler (router/src/server.rs) over the shared generation path (`api.generation`):
a chat request becomes one templated `GenerateRequest` (`add_special_tokens=False`, details on), a
completion request one per prompt. Errors before generation (template, tools, suffix, batch size) answer
422 JSON; errors during a stream (validation included, as in TGI) become an OpenAI error event, and every
stream ends with exactly `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tgi_async import metrics
from tgi_async.api import protocol as p
from tgi_async.api.body import read_json
from tgi_async.api.config import ApiConfig
from tgi_async.api.errors import JSON_HEADERS
from tgi_async.api.generation import GenerateResult, generate_all, stream_responses
from tgi_async.api.openai_requests import ChatRequest, CompletionRequest
from tgi_async.api.openai_responses import (
    CompletionChunk,
    CompletionComplete,
    CompletionFinal,
    ModelInfo,
    ModelsInfo,
    Usage,
    finish_reason,
)
from tgi_async.api.openapi import ROUTES
from tgi_async.api.routes import chat
from tgi_async.api.routes.chat import (
    DONE,
    chat_generate_request,
    openai_error,
    system_fingerprint,
)
from tgi_async.api.routes.common import until_disconnect
from tgi_async.api.serving import Serving, aclose
from tgi_async.api.sse import SSEResponse, sse_event
from tgi_async.scheduler.request import InferError

router = APIRouter()
router.routes.extend(chat.router.routes)  # /v1/chat/completions first, where TGI lists it


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _config(request: Request) -> ApiConfig:
    return request.app.state.config


def _json(model: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(p.to_json(model), headers={**(headers or {}), **JSON_HEADERS})


# ---- /v1/completions ---------------------------------------------------------------------------------


def _completion_error(message: str, error_type: str) -> Response:
    metrics.REQUEST_FAILURE.labels("validation").inc()
    body = p.to_json(p.ErrorResponse(error=message, error_type=error_type))
    return Response(body, status_code=422, headers=JSON_HEADERS)


@router.post("/v1/completions", **ROUTES["completions"])
async def completions(request: Request) -> Response:
    """TGI's `completions` (also reached through /invocations with a `prompt` body)."""
    completion = await read_json(request, CompletionRequest)
    metrics.REQUEST_COUNT.inc()
    serving, config = _serving(request), _config(request)
    if completion.suffix is not None:
        return _completion_error(
            "Suffix is not supported and can be achieved by preprocessing the prompt.", "suffix not supported"
        )
    if len(completion.prompt) > config.max_client_batch_size:
        return _completion_error(
            f"Number of prompts exceeds the maximum allowed batch size of {config.max_client_batch_size}",
            "batch size exceeded",
        )
    parameters = p.GenerateParameters(**completion.generate_parameters())
    requests = [p.GenerateRequest(inputs=prompt, parameters=parameters) for prompt in completion.prompt]
    fingerprint = system_fingerprint(config)
    if completion.stream:
        streams = [stream_responses(serving, generate, "completions") for generate in requests]
        headers = {
            "x-compute-type": streams[0][0]["x-compute-type"],
            "x-compute-characters": str(sum(int(h["x-compute-characters"]) for h, _ in streams)),
            "x-accel-buffering": "no",
        }
        events = _completion_events([items for _, items in streams], config.model_id, fingerprint)
        return SSEResponse(events, headers)
    results = await until_disconnect(request, generate_all(serving, requests, "completions"))
    if isinstance(results, Response):
        return results
    choices = []
    for index, result in enumerate(results):
        details = result.response.details
        assert details is not None  # NOTE: completion requests always ask details
        reason = finish_reason(details.finish_reason)
        choices.append(
            CompletionComplete(index=index, text=result.response.generated_text, finish_reason=reason)
        )
    prompt_tokens = sum(r.input_length for r in results)
    generated = sum(r.response.details.generated_tokens for r in results if r.response.details is not None)
    body = CompletionFinal(
        created=int(time.time()),
        model=config.model_id,
        system_fingerprint=fingerprint,
        choices=choices,
        usage=Usage.of(prompt_tokens, generated),
    )
    return _json(body, _summed_headers(config, results))


_SUMMED_HEADERS = (
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)


def _summed_headers(config: ApiConfig, results: list[GenerateResult]) -> dict[str, str]:
    """TGI's aggregate of the per-prompt headers (no x-compute-time: TGI drops it here)."""
    headers = {
        "x-compute-type": results[0].headers.get("x-compute-type", config.compute_type),
        "x-compute-characters": str(sum(int(r.headers["x-compute-characters"]) for r in results)),
    }
    for name in _SUMMED_HEADERS:
        headers[name] = str(sum(int(r.headers[name]) for r in results))
    return headers


async def _completion_events(
    streams: list[AsyncIterator[p.StreamResponse | InferError]], model: str, fingerprint: str
) -> AsyncIterator[bytes]:
    """Every prompt's tokens as `text_completion` chunks (the last with usage), round-robin, then [DONE]."""
    async with _merged(streams) as items:
        async for index, item in items:
            if isinstance(item, InferError):
                yield openai_error(item)
                continue
            details = item.details
            if details is None:
                chunk: CompletionChunk | CompletionFinal = CompletionChunk(
                    created=int(time.time()),
                    choices=[CompletionComplete(index=index, text=item.token.text, finish_reason="")],
                    model=model,
                    system_fingerprint=fingerprint,
                )
            else:
                # NOTE: TGI's streamed final chunk keeps the raw reason (`eos_token`), unlike the others.
                reason = finish_reason(details.finish_reason, use_stop=False)
                chunk = CompletionFinal(
                    created=int(time.time()),
                    model=model,
                    system_fingerprint=fingerprint,
                    choices=[CompletionComplete(index=index, text=item.token.text, finish_reason=reason)],
                    usage=Usage.of(details.input_length, details.generated_tokens),
                )
            yield sse_event(chunk)
    yield DONE


@contextlib.asynccontextmanager
async def _merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[AsyncIterator[tuple[int, Any]]]:
    """Run all `streams` now; read them round-robin, one item each in turn (TGI's merge loop)."""
    end = object()
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in streams]

    async def pump(stream: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
        try:
            async for item in stream:
                queue.put_nowait(item)
        finally:
            queue.put_nowait(end)
            await aclose(stream)

    async def read() -> AsyncIterator[tuple[int, Any]]:
        active = list(range(len(streams)))
        while active:
            for index in list(active):
                item = await queues[index].get()
                if item is end:
                    active.remove(index)
                else:
                    yield index, item

    tasks = [asyncio.ensure_future(pump(s, q)) for s, q in zip(streams, queues, strict=True)]
    reader = read()
    try:
        yield reader
    finally:
        await reader.aclose()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---- /v1/models, /chat_tokenize ----------------------------------------------------------------------


@router.get("/v1/models", **ROUTES["openai_get_model_info"])
async def models(request: Request) -> Response:
    model_id = _config(request).model_id
    return _json(ModelsInfo(data=[ModelInfo(id=model_id, owned_by=model_id)]))


@router.post("/chat_tokenize", **ROUTES["get_chat_tokenize"])
async def chat_tokenize(request: Request) -> Response:
    """The templated prompt of a chat request and its tokens (TGI's `ChatTokenizeResponse`)."""
    chat = await read_json(request, ChatRequest)
    metrics.REQUEST_COUNT.inc()
    generate, _ = await chat_generate_request(request, chat)
    body = await _serving(request).validator.chat_tokenize(generate.inputs)
    return Response(body, headers=JSON_HEADERS)
