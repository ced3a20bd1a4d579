"""TGI's /generate and /generate_stream bodies, headers and request metrics, for any route to reuse.

`generate_response` is TGI's `generate_internal` (also behind POST /, /invocations, /vertex and the OpenAI
routes), `stream_responses` its `generate_stream_internal`: headers now, then `StreamResponse`s or one
`InferError` (an error never ends the HTTP response early; the route turns it into an SSE event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tgi_async import metrics
from tgi_async.api import protocol as p
from tgi_async.api.request_log import log_failure, log_success, request_span
from tgi_async.api.serving import GenerateOutcome, Serving
from tgi_async.logs import LogSpan
from tgi_async.scheduler.request import EndEvent, InferError, PrefillEvent, Token, TokenEvent

log = logging.getLogger(__name__)


def token(t: Token) -> p.Token:
    # NOTE: built without validation (the scheduler's tokens are typed already): once per streamed token.
    return p.Token.model_construct(id=t.id, text=t.text, logprob=p.f32(t.logprob), special=t.special)


def prefill_token(t: Token) -> p.PrefillToken:
    return p.PrefillToken(id=t.id, text=t.text, logprob=p.f32(t.logprob))


def _ms(seconds: float) -> str:
    return str(int(max(0.0, seconds) * 1000))


@dataclass(frozen=True, slots=True)
class Timings:
    """A finished request's phases in seconds (TGI's header and histogram values)."""

    total: float
    validation: float  # arrival -> queued at the scheduler
    queue: float  # queued -> first prefill
    inference: float  # first prefill -> now
    per_token: float

    @classmethod
    def measure(
        cls, arrived_at: float, queued_at: float, started_at: float, generated_tokens: int
    ) -> Timings:
        now = time.monotonic()
        inference = max(0.0, now - started_at)
        return cls(
            total=now - arrived_at,
            validation=max(0.0, queued_at - arrived_at),
            queue=max(0.0, started_at - queued_at),
            inference=inference,
            per_token=inference / max(1, generated_tokens),
        )

    def record(self, generated_tokens: int) -> None:
        metrics.REQUEST_SUCCESS.inc()
        metrics.REQUEST_DURATION.observe(self.total)
        metrics.REQUEST_VALIDATION_DURATION.observe(self.validation)
        metrics.REQUEST_QUEUE_DURATION.observe(self.queue)
        metrics.REQUEST_INFERENCE_DURATION.observe(self.inference)
        metrics.REQUEST_MEAN_TIME_PER_TOKEN_DURATION.observe(self.per_token)
        metrics.REQUEST_GENERATED_TOKENS.observe(generated_tokens)


@dataclass(frozen=True, slots=True)
class GenerateResult:
    response: p.GenerateResponse
    headers: dict[str, str]
    input_length: int
    outcome: GenerateOutcome


def _sequence(outcome: GenerateOutcome, prompt: str | None) -> p.BestOfSequence:
    text = outcome.generated_text
    return p.BestOfSequence(
        generated_text=(prompt or "") + text.text,
        finish_reason=text.finish_reason,
        generated_tokens=text.generated_tokens,
        seed=text.seed,
        prefill=[prefill_token(t) for t in outcome.prefill],
        tokens=[token(t) for t in outcome.tokens],
        top_tokens=[[token(t) for t in top] for top in outcome.top_tokens],
    )


def details(outcome: GenerateOutcome, prompt: str | None, best_of: bool) -> p.Details:
    text = outcome.generated_text
    return p.Details(
        finish_reason=text.finish_reason,
        generated_tokens=text.generated_tokens,
        seed=text.seed,
        prefill=[prefill_token(t) for t in outcome.prefill],
        tokens=[token(t) for t in outcome.tokens],
        best_of_sequences=[_sequence(o, prompt) for o in outcome.best_of_sequences] if best_of else None,
        top_tokens=[[token(t) for t in top] for top in outcome.top_tokens],
    )


async def generate_response(
    serving: Serving, request: p.GenerateRequest, span_name: str = "generate"
) -> GenerateResult:
    """Run `request` to the end: TGI's response body, `x-*` headers, success metrics and its log line
    (`span_name`: the route's, as TGI names it)."""
    arrived_at = time.monotonic()
    metrics.REQUEST_COUNT.inc()
    parameters = request.parameters
    span = request_span(span_name, parameters)
    prompt = request.inputs if parameters.return_full_text else None
    best_of = parameters.best_of is not None and parameters.best_of > 1
    try:
        if best_of:
            outcome = await serving.generate_best_of(request, parameters.best_of)
        else:
            outcome = await serving.generate(request)
    except InferError as error:
        log_failure(span, error)
        raise
    with_details = parameters.details or parameters.decoder_input_details
    generated = outcome.generated_text
    timings = Timings.measure(arrived_at, outcome.queued_at, outcome.started_at, generated.generated_tokens)
    headers = {
        "x-compute-type": serving.config.compute_type,
        "x-compute-time": metrics.rust_f64(timings.total),
        "x-compute-characters": str(len(request.inputs)),
        "x-total-time": _ms(timings.total),
        "x-validation-time": _ms(timings.validation),
        "x-queue-time": _ms(timings.queue),
        "x-inference-time": _ms(timings.inference),
        "x-time-per-token": _ms(timings.per_token),
        "x-prompt-tokens": str(outcome.input_length),
        "x-generated-tokens": str(generated.generated_tokens),
    }
    timings.record(generated.generated_tokens)
    log_success(span, timings, generated.seed)
    response = p.GenerateResponse(
        generated_text=(prompt or "") + generated.text,
        details=details(outcome, prompt, best_of) if with_details else None,
    )
    return GenerateResult(response, headers, outcome.input_length, outcome)


def stream_headers(serving: Serving, request: p.GenerateRequest) -> dict[str, str]:
    return {
        "x-compute-type": serving.config.compute_type,
        "x-compute-characters": str(len(request.inputs)),
        "x-accel-buffering": "no",
    }


def stream_responses(
    serving: Serving, request: p.GenerateRequest, span_name: str = "generate_stream"
) -> tuple[dict[str, str], AsyncIterator[p.StreamResponse | InferError]]:
    """Headers for the SSE response, and its items: `StreamResponse`s, or one `InferError` that ends it."""
    metrics.REQUEST_COUNT.inc()
    span = request_span(span_name, request.parameters)
    return stream_headers(serving, request), _stream_items(serving, request, time.monotonic(), span)


def _failed(span: LogSpan, error: InferError) -> InferError:
    log_failure(span, error)
    return error


async def _stream_items(
    serving: Serving, request: p.GenerateRequest, arrived_at: float, span: LogSpan
) -> AsyncIterator[p.StreamResponse | InferError]:
    parameters = request.parameters
    prompt = request.inputs if parameters.return_full_text else None
    if (1 if parameters.best_of is None else parameters.best_of) != 1:
        metrics.REQUEST_FAILURE.labels("validation").inc()
        yield _failed(span, InferError("`best_of` != 1 is not supported when streaming tokens", "validation"))
        return
    if parameters.decoder_input_details:
        metrics.REQUEST_FAILURE.labels("validation").inc()
        message = "`decoder_input_details` == true is not supported when streaming tokens"
        yield _failed(span, InferError(message, "validation"))
        return
    stream = serving.stream(request)
    try:
        try:
            await stream.start()
        except InferError as error:
            yield _failed(span, error)
            return
        index = 0
        try:
            async for event in stream:
                index += 1
                if isinstance(event, PrefillEvent):
                    continue
                if isinstance(event, TokenEvent):
                    yield p.StreamResponse.model_construct(
                        index=index,
                        token=token(event.token),
                        top_tokens=[token(t) for t in event.top_tokens],
                        generated_text=None,
                        details=None,
                    )
                    continue
                assert isinstance(event, EndEvent)
                generated = event.generated_text
                stream_details = None
                if parameters.details:
                    stream_details = p.StreamDetails(
                        finish_reason=generated.finish_reason,
                        generated_tokens=generated.generated_tokens,
                        seed=generated.seed,
                        input_length=stream.input_length,
                    )
                timings = Timings.measure(
                    arrived_at, event.queued_at, event.started_at, generated.generated_tokens
                )
                timings.record(generated.generated_tokens)
                log_success(span, timings, generated.seed)
                yield p.StreamResponse(
                    index=index,
                    token=token(event.token),
                    top_tokens=[token(t) for t in event.top_tokens],
                    generated_text=(prompt or "") + generated.text,
                    details=stream_details,
                )
                return
        except InferError as error:
            yield _failed(span, error)
            return
        except Exception:  # a bug below us must still end the stream with an error event
            log.exception("stream failed")
            yield InferError("internal error", "generation")  # the log has the exception, not the client
            return
        metrics.REQUEST_FAILURE.labels("incomplete").inc()
        yield _failed(span, InferError("Incomplete generation stream", "incomplete_generation_stream"))
    finally:
        await stream.aclose()


async def generate_all(
    serving: Serving, requests: list[p.GenerateRequest], span_name: str = "generate"
) -> list[GenerateResult]:
    """All requests at once; the first error cancels the others and is raised (TGI's `try_collect`)."""
    if len(requests) == 1:
        return [await generate_response(serving, requests[0], span_name)]
    tasks = [asyncio.ensure_future(generate_response(serving, r, span_name)) for r in requests]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
