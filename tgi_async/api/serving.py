"""Admission and request lifetime between the routes and a scheduler (TGI's `Infer`, router/src/infer).

`Serving.stream(request)` is the one way in: it takes a concurrency permit without waiting (none free:
429 "Model is overloaded"), validates, hands the request to the scheduler and yields its events. Closing
the stream (`aclose()`, which the routes always do, also when the client leaves) closes the scheduler's
iterator, so the scheduler drops the request, and gives the permit back.

Like TGI, a request is scheduled at most `DEFAULT_GENERATION_LENGTH` new tokens at a time: when a chunk
ends on `length` before the tokens the client may get, the text so far is appended to the prompt,
re-validated and scheduled again; the client sees one uninterrupted stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from tgi_async import metrics
from tgi_async.api.config import ApiConfig
from tgi_async.api.protocol import GenerateRequest
from tgi_async.api.validation import ValidatedRequest, Validator
from tgi_async.scheduler.base import Scheduler
from tgi_async.scheduler.request import (
    EndEvent,
    GeneratedText,
    InferError,
    InferEvent,
    PrefillEvent,
    Token,
    TokenEvent,
)
from tgi_async.scheduler.request import GenerateRequest as ScheduledRequest
from tgi_async.telemetry.http import rejected


@dataclass(slots=True)
class GenerateOutcome:
    """Everything one finished request produced (TGI's `InferResponse`). Times are `time.monotonic()`."""

    input_length: int
    prefill: tuple[Token, ...]
    tokens: list[Token]
    top_tokens: list[tuple[Token, ...]]  # one entry per token when top_n_tokens > 0, else empty
    generated_text: GeneratedText
    queued_at: float
    started_at: float
    best_of_sequences: list[GenerateOutcome] = field(default_factory=list)  # the others, with best_of > 1

    @property
    def mean_logprob(self) -> float:
        if not self.tokens:
            return math.nan
        return sum(t.logprob for t in self.tokens) / len(self.tokens)


class Serving:
    """The API's handle on a scheduler: permits, validation, best_of."""

    def __init__(self, config: ApiConfig, scheduler: Scheduler, validator: Validator, tokenizer: Any = None):
        self.config = config
        self.scheduler = scheduler
        self.validator = validator
        self.tokenizer = tokenizer
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Permits held now (requests between admission and close)."""
        return self._in_flight

    def _try_acquire(self) -> bool:
        if self._in_flight >= self.config.max_concurrent_requests:
            return False
        self._in_flight += 1
        return True

    def _release(self) -> None:
        self._in_flight -= 1

    async def health(self) -> bool:
        return await self.scheduler.health()

    def stream(self, request: GenerateRequest) -> InferStream:
        """The events of `request`; admission and validation happen at `start()` or the first `__anext__`."""
        return InferStream(self, request)

    async def generate(self, request: GenerateRequest) -> GenerateOutcome:
        """Run `request` to the end and collect its events (no best_of; see `generate_best_of`)."""
        use_top_tokens = (request.parameters.top_n_tokens or 0) > 0
        prefill: tuple[Token, ...] = ()
        tokens: list[Token] = []
        top_tokens: list[tuple[Token, ...]] = []
        end: EndEvent | None = None
        stream = self.stream(request)
        try:
            async for event in stream:
                if isinstance(event, PrefillEvent):
                    prefill = event.tokens
                elif isinstance(event, TokenEvent | EndEvent):
                    tokens.append(event.token)
                    top_tokens.append(event.top_tokens)
                    if isinstance(event, EndEvent):
                        end = event
        finally:
            await stream.aclose()
        if end is None:
            metrics.REQUEST_FAILURE.labels("incomplete").inc()
            raise InferError("Incomplete generation", "incomplete_generation")
        return GenerateOutcome(
            input_length=stream.input_length,
            prefill=prefill,
            tokens=tokens,
            top_tokens=top_tokens if use_top_tokens else [],
            generated_text=end.generated_text,
            queued_at=end.queued_at,
            started_at=end.started_at,
        )

    async def generate_best_of(self, request: GenerateRequest, best_of: int) -> GenerateOutcome:
        """`best_of` sampled runs at once; the one with the highest mean token logprob, others attached."""
        best_of = self.validator.validate_best_of(best_of)
        tasks = [asyncio.ensure_future(self.generate(request)) for _ in range(best_of)]
        try:
            outcomes = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        best_index, best_score = 0, -math.inf
        for i, outcome in enumerate(outcomes):
            if outcome.mean_logprob > best_score:
                best_index, best_score = i, outcome.mean_logprob
        best = outcomes.pop(best_index)
        best.best_of_sequences = outcomes
        return best


class InferStream:
    """One admitted request's events; an async iterator that must be closed (`aclose()`)."""

    def __init__(self, serving: Serving, request: GenerateRequest):
        self._serving = serving
        self.client_request = request
        self.validated: ValidatedRequest | None = None
        self._events: AsyncIterator[InferEvent] | None = None
        self._has_permit = False
        self._closed = False

    @property
    def request(self) -> ScheduledRequest:
        """The validated request handed to the scheduler (after `start()`)."""
        assert self.validated is not None, "start() first"
        return self.validated.request

    @property
    def input_length(self) -> int:
        return self.request.input_length

    async def start(self) -> InferStream:
        """Take a permit, validate and schedule; raises `InferError` (overloaded, validation). Idempotent."""
        if self._events is not None:
            return self
        if self._closed:
            raise RuntimeError("InferStream.start() after aclose()")
        serving = self._serving
        if not serving._try_acquire():
            rejected(serving.in_flight, serving.config.max_concurrent_requests)
            metrics.REQUEST_FAILURE.labels("overloaded").inc()
            raise InferError("Model is overloaded", "overloaded")
        self._has_permit = True
        try:
            request = self.client_request
            self.validated = await serving.validator.validate_full(
                request.inputs, request.parameters, request.add_special_tokens
            )
        except InferError:
            metrics.REQUEST_FAILURE.labels("validation").inc()
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise
        self._events = self._run(self.validated)
        return self

    def __aiter__(self) -> InferStream:
        return self

    async def __anext__(self) -> InferEvent:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        assert self._events is not None
        return await anext(self._events)

    async def aclose(self) -> None:
        """Stop the request at the scheduler (if running) and give the permit back. Idempotent."""
        self._closed = True
        events, self._events = self._events, None
        try:
            if events is not None:
                await aclose(events)
        finally:
            if self._has_permit:
                self._has_permit = False
                self._serving._release()

    async def _run(self, validated: ValidatedRequest) -> AsyncIterator[InferEvent]:
        serving = self._serving
        client = self.client_request
        parameters = client.parameters.model_copy(update={"seed": validated.request.sampling.seed})
        inputs = client.inputs
        events = serving.scheduler.generate(validated.request)
        total = 0
        first_queued = first_started = None
        text_so_far: GeneratedText | None = None
        try:
            while True:
                end: EndEvent | None = None
                async for event in events:
                    if isinstance(event, EndEvent):
                        end = event
                        break
                    if isinstance(event, TokenEvent):
                        total += 1
                    yield event
                if end is None:
                    return  # the scheduler stopped without an end: the consumer reports it incomplete
                total += 1
                first_queued = end.queued_at if first_queued is None else first_queued
                first_started = end.started_at if first_started is None else first_started
                chunk = end.generated_text
                if text_so_far is not None:
                    text_so_far = replace(
                        text_so_far,
                        text=text_so_far.text + chunk.text,
                        generated_tokens=total,
                        finish_reason=chunk.finish_reason,
                    )
                if chunk.finish_reason == "length" and total < validated.max_total_new_tokens:
                    inputs += chunk.text
                    text_so_far = text_so_far or chunk
                    if parameters.max_new_tokens is not None:
                        # NOTE: TGI re-asks the original max_new_tokens here and can overshoot it by up to
                        # a chunk; we ask for what is left.
                        remaining = validated.max_total_new_tokens - total
                        parameters = parameters.model_copy(update={"max_new_tokens": remaining})
                    next_events = await self._continue(inputs, parameters)
                    if next_events is not None:
                        with contextlib.suppress(Exception):
                            await aclose(events)
                        events = next_events
                        yield TokenEvent(end.token, end.top_tokens)
                        continue
                yield EndEvent(
                    token=end.token,
                    generated_text=text_so_far or chunk,
                    queued_at=first_queued,
                    started_at=first_started,
                    top_tokens=end.top_tokens,
                )
                return
        finally:
            await aclose(events)

    async def _continue(self, inputs: str, parameters) -> AsyncIterator[InferEvent] | None:
        """The next chunk's events, or None when the longer prompt no longer validates."""
        try:
            validated = await self._serving.validator.validate_full(
                inputs, parameters, self.client_request.add_special_tokens
            )
        except InferError:
            return None
        return self._serving.scheduler.generate(validated.request)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async iterator if it can be closed (async generators can)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
