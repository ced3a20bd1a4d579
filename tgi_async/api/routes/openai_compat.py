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
from tgi_async.api.chat_template import ChatTemplate, ChatTemplateError, TemplateNotFound
from tgi_async.api.config import ApiConfig
from tgi_async.api.errors import JSON_HEADERS, error_message
from tgi_async.api.generation import GenerateResult, generate_all, generate_response, stream_responses
from tgi_async.api.openai_protocol import (
    DEFAULT_TOOL_PROMPT,
    ApiError,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    ChatRequest,
    CompletionChunk,
    CompletionComplete,
    CompletionFinal,
    CompletionRequest,
    Logprob,
    Logprobs,
    ModelInfo,
    ModelsInfo,
    OpenAIErrorEvent,
    OutputMessage,
    Tool,
    TopLogprob,
    Usage,
    finish_reason,
    tool_grammar,
)
from tgi_async.api.openapi import ROUTES
from tgi_async.api.routes.common import until_disconnect
from tgi_async.api.serving import Serving, aclose
from tgi_async.api.sse import SSEResponse, sse_data, sse_event
from tgi_async.scheduler.request import InferError

router = APIRouter()

DONE = sse_data("[DONE]")
_NOT_BUILT = object()


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _config(request: Request) -> ApiConfig:
    return request.app.state.config


def _json(model: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(p.to_json(model), headers={**(headers or {}), **JSON_HEADERS})


def system_fingerprint(config: ApiConfig) -> str:
    return f"{config.version}-{config.docker_label or 'native'}"


def chat_template(request: Request) -> ChatTemplate | None:
    """`app.state.chat_template` if the app set it, else built once from `app.state.tokenizer`."""
    state = request.app.state
    template = getattr(state, "chat_template", _NOT_BUILT)
    if template is _NOT_BUILT:
        template = ChatTemplate.from_tokenizer(getattr(state, "tokenizer", None))
        state.chat_template = template
    return template


async def _render(request: Request, chat: ChatRequest, tools: tuple[list[Tool], str] | None = None) -> str:
    """The chat's prompt; a large request is templated in a validation worker, off the event loop."""
    try:
        template = chat_template(request)
        if template is None:
            raise TemplateNotFound()
        body_size = len(await request.body())  # NOTE: read already; Starlette keeps it
        return await _serving(request).validator.render(template, chat.messages, tools, body_size)
    except ChatTemplateError as exc:
        metrics.REQUEST_FAILURE.labels("template").inc()
        raise InferError(exc.message, exc.error_type) from None


async def chat_generate_request(request: Request, chat: ChatRequest) -> p.GenerateRequest:
    """TGI's `ChatRequest::try_into_generate`: the templated prompt and its parameters.

    Tools (unless `tool_choice` is `none`) and `response_format` become a grammar, which the validator
    refuses today ("grammar is not supported"), as TGI does with grammar support disabled.
    """
    if chat.response_format is not None and chat.tools is not None:
        raise InferError("Grammar and tools are mutually exclusive", "tool_error")
    grammar = chat.response_format
    if grammar is not None:
        inputs = await _render(request, chat)
    elif chat.tools is not None and (selected := tool_grammar(chat.tools, chat.tool_choice)) is not None:
        tools, grammar = selected
        inputs = await _render(request, chat, (tools, chat.tool_prompt or DEFAULT_TOOL_PROMPT))
    else:
        inputs = await _render(request, chat)
    parameters = p.GenerateParameters(**chat.generate_parameters(grammar))
    return p.GenerateRequest(inputs=inputs, parameters=parameters, add_special_tokens=False)


def _logprobs(tokens: list[p.Token], top_tokens: list[list[p.Token]]) -> Logprobs:
    content = []
    for i, token in enumerate(tokens):
        top = top_tokens[i] if i < len(top_tokens) else []
        top_logprobs = [TopLogprob(token=t.text, logprob=t.logprob) for t in top]
        content.append(Logprob(token=token.text, logprob=token.logprob, top_logprobs=top_logprobs))
    return Logprobs(content=content)


def _openai_error(error: InferError) -> bytes:
    return sse_event(OpenAIErrorEvent(error=ApiError(message=error_message(error))))


# ---- /v1/chat/completions ----------------------------------------------------------------------------


@router.post("/v1/chat/completions", **ROUTES["chat_completions"])
async def chat_completions(request: Request) -> Response:
    """TGI's `chat_completions` (also reached through /invocations with a `messages` body)."""
    chat = await read_json(request, ChatRequest)
    metrics.REQUEST_COUNT.inc()
    serving, config = _serving(request), _config(request)
    generate = await chat_generate_request(request, chat)
    model = config.model_id if chat.model in (None, "tgi") else chat.model
    fingerprint = system_fingerprint(config)
    logprobs = bool(chat.logprobs)
    if chat.stream:
        headers, items = stream_responses(serving, generate, "chat_completions")
        events = _chat_events(items, model, fingerprint, logprobs, chat.stream_options.include_usage)
        return SSEResponse(events, headers)
    result = await until_disconnect(request, generate_response(serving, generate, "chat_completions"))
    if isinstance(result, Response):
        return result
    details = result.response.details
    assert details is not None  # NOTE: chat requests always ask details
    completion = ChatCompletion(
        created=int(time.time()),
        model=model,
        system_fingerprint=fingerprint,
        choices=[
            ChatCompletionComplete(
                message=OutputMessage(content=result.response.generated_text),
                logprobs=_logprobs(details.tokens, details.top_tokens) if logprobs else None,
                finish_reason=finish_reason(details.finish_reason),
            )
        ],
        usage=Usage.of(result.input_length, details.generated_tokens),
    )
    return _json(completion, result.headers)


async def _chat_events(
    items: AsyncIterator[p.StreamResponse | InferError],
    model: str,
    fingerprint: str,
    logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """TGI's `ChatState` without tools: one chunk per token, then the usage chunk if asked, then [DONE]."""
    try:
        async for item in items:
            if isinstance(item, InferError):
                yield _openai_error(item)
                continue
            token, details = item.token, item.details
            chunk = ChatCompletionChunk(
                created=int(time.time()),
                model=model,
                system_fingerprint=fingerprint,
                choices=[
                    ChatCompletionChoice(
                        # NOTE: a special token (EOS) streams as empty content, as in TGI
                        delta=OutputMessage(content="" if token.special else token.text),
                        logprobs=_logprobs([token], [item.top_tokens]) if logprobs else None,
                        finish_reason=None if details is None else finish_reason(details.finish_reason),
                    )
                ],
            )
            yield sse_event(chunk)
            if include_usage and details is not None:
                usage = Usage.of(details.input_length, details.generated_tokens)
                final = ChatCompletionChunk(
                    created=int(time.time()),
                    model=model,
                    system_fingerprint=fingerprint,
                    choices=[],
                    usage=usage,
                )
                yield sse_event(final)
    finally:
        await aclose(items)
    yield DONE


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
                yield _openai_error(item)
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
    generate = await chat_generate_request(request, chat)
    body = await _serving(request).validator.chat_tokenize(generate.inputs)
    return Response(body, headers=JSON_HEADERS)
