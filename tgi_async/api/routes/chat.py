"""/v1/chat/completions: TGI's `chat_completions` (router/src/server.rs) with its tool calling (chat.rs).

A chat request becomes one templated `GenerateRequest` (`add_special_tokens=False`, details on). Tools
(unless `tool_choice` is `none`) become TGI's tool grammar; the answer comes back as `tool_calls`, or, when
the model chose `no_tool`, the request is generated again without tools and answered as text (TGI keeps the
first generation's finish reason, token count and logprobs, and the second's prompt length). Errors before
generation answer 422 JSON; errors during a stream become an OpenAI error event; every stream ends with
exactly `data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from tgi_async import metrics
from tgi_async.api import protocol as p
from tgi_async.api.body import read_json
from tgi_async.api.chat_template import ChatTemplate, ChatTemplateError, TemplateNotFound
from tgi_async.api.config import ApiConfig
from tgi_async.api.errors import JSON_HEADERS, error_message
from tgi_async.api.generation import generate_response, stream_responses
from tgi_async.api.openai_requests import DEFAULT_TOOL_PROMPT, ChatRequest, Tool
from tgi_async.api.openai_responses import (
    ApiError,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    DeltaFunction,
    DeltaToolCall,
    Logprob,
    Logprobs,
    OpenAIErrorEvent,
    OutputMessage,
    ToolCallDelta,
    ToolCallMessage,
    TopLogprob,
    Usage,
    finish_reason,
)
from tgi_async.api.openapi import ROUTES
from tgi_async.api.routes.common import until_disconnect
from tgi_async.api.serving import Serving, aclose
from tgi_async.api.sse import SSEResponse, sse_data, sse_event
from tgi_async.api.tool_calls import NO_TOOL, ToolCallStream, next_tool_call_id, parse_output, tool_grammar
from tgi_async.scheduler.request import InferError

router = APIRouter()
SPAN = "chat_completions"  # the route's span, as TGI names it (its log line's too)

DONE = sse_data("[DONE]")
_NOT_BUILT = object()


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
        serving: Serving = request.app.state.serving
        return await serving.validator.render(template, chat.messages, tools, body_size)
    except ChatTemplateError as exc:
        metrics.REQUEST_FAILURE.labels("template").inc()
        raise InferError(exc.message, exc.error_type) from None


async def chat_generate_request(request: Request, chat: ChatRequest) -> tuple[p.GenerateRequest, bool]:
    """TGI's `ChatRequest::try_into_generate`: the templated prompt, its parameters, and whether the
    answer is a tool call (tools given and `tool_choice` not `none`)."""
    if chat.response_format is not None and chat.tools is not None:
        raise InferError("Grammar and tools are mutually exclusive", "tool_error")
    grammar, using_tools = chat.response_format, False
    if grammar is not None:
        inputs = await _render(request, chat)
    elif chat.tools is not None and (selected := tool_grammar(chat.tools, chat.tool_choice)) is not None:
        tools, grammar = selected
        inputs = await _render(request, chat, (tools, chat.tool_prompt or DEFAULT_TOOL_PROMPT))
        using_tools = True
    else:
        inputs = await _render(request, chat)
    parameters = p.GenerateParameters(**chat.generate_parameters(grammar))
    return p.GenerateRequest(inputs=inputs, parameters=parameters, add_special_tokens=False), using_tools


async def _without_tools(request: Request, chat: ChatRequest) -> p.GenerateRequest:
    """The request again as plain chat, after the model chose `no_tool`."""
    plain = chat.model_copy(update={"tools": None, "response_format": None})
    generate, _ = await chat_generate_request(request, plain)
    return generate


def _logprobs(tokens: list[p.Token], top_tokens: list[list[p.Token]]) -> Logprobs:
    content = []
    for i, token in enumerate(tokens):
        top = top_tokens[i] if i < len(top_tokens) else []
        top_logprobs = [TopLogprob(token=t.text, logprob=t.logprob) for t in top]
        content.append(Logprob(token=token.text, logprob=token.logprob, top_logprobs=top_logprobs))
    return Logprobs(content=content)


def openai_error(error: InferError) -> bytes:
    return sse_event(OpenAIErrorEvent(error=ApiError(message=error_message(error))))


@router.post("/v1/chat/completions", **ROUTES["chat_completions"])
async def chat_completions(request: Request) -> Response:
    """TGI's `chat_completions` (also reached through /invocations with a `messages` body)."""
    chat = await read_json(request, ChatRequest)
    metrics.REQUEST_COUNT.inc()
    serving: Serving = request.app.state.serving
    config: ApiConfig = request.app.state.config
    tool_call_id = next_tool_call_id(chat.messages)
    generate, using_tools = await chat_generate_request(request, chat)
    answer = _Answer(
        model=config.model_id if chat.model in (None, "tgi") else chat.model,
        fingerprint=system_fingerprint(config),
        logprobs=bool(chat.logprobs),
        include_usage=chat.stream_options.include_usage,
        tool_call_id=tool_call_id,
    )
    if chat.stream:
        headers, items = stream_responses(serving, generate, SPAN)
        retry = await _without_tools(request, chat) if using_tools else None
        return SSEResponse(answer.events(serving, items, retry), headers)
    result = await until_disconnect(request, generate_response(serving, generate, SPAN))
    if isinstance(result, Response):
        return result
    headers, input_length = result.headers, result.input_length
    details = result.response.details
    assert details is not None  # NOTE: chat requests always ask details
    message: OutputMessage | ToolCallMessage = OutputMessage(content=result.response.generated_text)
    if using_tools:
        tool_calls = parse_output(result.response.generated_text)
        if tool_calls is None:
            plain = await until_disconnect(
                request, generate_response(serving, await _without_tools(request, chat), SPAN)
            )
            if isinstance(plain, Response):
                return plain
            headers, input_length = plain.headers, plain.input_length
            message = OutputMessage(content=plain.response.generated_text)
        else:
            message = ToolCallMessage(tool_calls=tool_calls)
    completion = ChatCompletion(
        created=int(time.time()),
        model=answer.model,
        system_fingerprint=answer.fingerprint,
        choices=[
            ChatCompletionComplete(
                message=message,
                logprobs=_logprobs(details.tokens, details.top_tokens) if answer.logprobs else None,
                finish_reason=finish_reason(details.finish_reason),
            )
        ],
        usage=Usage.of(input_length, details.generated_tokens),
    )
    return Response(p.to_json(completion), headers={**headers, **JSON_HEADERS})


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str
    fingerprint: str
    logprobs: bool
    include_usage: bool
    tool_call_id: str

    def chunk(self, item: p.StreamResponse, delta: OutputMessage | ToolCallDelta) -> bytes:
        token, details = item.token, item.details
        choice = ChatCompletionChoice(
            delta=delta,
            logprobs=_logprobs([token], [item.top_tokens]) if self.logprobs else None,
            finish_reason=None if details is None else finish_reason(details.finish_reason),
        )
        chunk = ChatCompletionChunk(
            created=int(time.time()), model=self.model, system_fingerprint=self.fingerprint, choices=[choice]
        )
        return sse_event(chunk)

    def tool_chunk(self, item: p.StreamResponse, text: str, name: str | None) -> bytes:
        # NOTE: TGI reports the delta's own text as the token's (logprobs included)
        item = item.model_copy(update={"token": item.token.model_copy(update={"text": text})})
        call = DeltaToolCall(id=self.tool_call_id, function=DeltaFunction(name=name, arguments=text))
        return self.chunk(item, ToolCallDelta(tool_calls=[call]))

    async def events(
        self,
        serving: Serving,
        items: AsyncIterator[p.StreamResponse | InferError],
        retry: p.GenerateRequest | None,
    ) -> AsyncIterator[bytes]:
        """TGI's `ChatState` over the stream: content chunks, or a tool call's deltas (`retry`: the plain
        request to stream instead if the model chooses `no_tool`), usage if asked, then [DONE]."""
        tools = ToolCallStream() if retry is not None else None
        try:
            async for item in items:
                if isinstance(item, InferError):
                    yield openai_error(item)
                    continue
                token = item.token
                if tools is None:
                    # NOTE: a special token (EOS) streams as empty content, as in TGI
                    yield self.chunk(item, OutputMessage(content="" if token.special else token.text))
                else:
                    deltas = tools.push(token.text, token.special)
                    if deltas == NO_TOOL:
                        break
                    for delta in deltas:
                        if delta.kind == "tool":
                            yield self.tool_chunk(item, delta.text, delta.name)
                        else:
                            yield self.chunk(item, OutputMessage(content=delta.text))
                if self.include_usage and item.details is not None:
                    usage = Usage.of(item.details.input_length, item.details.generated_tokens)
                    yield sse_event(
                        ChatCompletionChunk(
                            created=int(time.time()),
                            model=self.model,
                            system_fingerprint=self.fingerprint,
                            choices=[],
                            usage=usage,
                        )
                    )
            else:
                yield DONE
                return
        finally:
            await aclose(items)
        assert retry is not None
        _, plain = stream_responses(serving, retry, SPAN)
        async for event in self.events(serving, plain, None):
            yield event
