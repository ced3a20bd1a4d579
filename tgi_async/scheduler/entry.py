"""A request inside the scheduler: its output queue, KV allocation, progress, and event delivery."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from tgi_async.client.types import Generation
from tgi_async.scheduler.blocks import BlockAllocation
from tgi_async.scheduler.request import (
    EndEvent,
    GenerateRequest,
    InferError,
    InferEvent,
    PrefillEvent,
    TokenEvent,
)


@dataclass(eq=False, slots=True)
class Entry:
    """Scheduler-side state of one request. Mutated only from the event loop's thread."""

    id: int
    request: GenerateRequest
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # first prefill sent
    allocation: BlockAllocation | None = None
    cancelled: bool = False  # the client left: stop, filter out, free
    ended: bool = False  # an EndEvent or error was delivered: nothing more may be sent
    generated_ids: list[int] = field(
        default_factory=list
    )  # its tokens so far (prefix caching keeps their KV)
    outbox: asyncio.Queue[InferEvent | InferError] = field(default_factory=asyncio.Queue)

    @property
    def live(self) -> bool:
        """Still wants tokens: neither ended nor abandoned."""
        return not (self.ended or self.cancelled)

    @property
    def max_new_tokens(self) -> int:
        return self.request.stopping.max_new_tokens

    def prompt_ids(self) -> tuple[int, ...] | None:
        """The prompt's token ids, when the router knows them all (prefix caching matches and keeps them);
        None for requests asking for prompt logprobs (TGI computes those whole)."""
        request = self.request
        if request.prefill_logprobs or len(request.input_ids) != request.input_length:
            return None
        return request.input_ids

    def kv_ids(self) -> tuple[int, ...] | None:
        """What its KV holds, position by position: the prompt, then each token fed back (all but the last
        one it got); None if the shard never finished its prompt."""
        prompt = self.prompt_ids()
        if prompt is None or not self.generated_ids:
            return None
        return prompt + tuple(self.generated_ids[:-1])

    def fail(self, error: InferError) -> None:
        if not self.ended:
            self.ended = True
            self.outbox.put_nowait(error)

    def publish(self, events: list[InferEvent]) -> None:
        """Hand events from `record` to the client's stream."""
        for event in events:
            self.outbox.put_nowait(event)

    def record(self, generation: Generation) -> list[InferEvent]:
        """Account one step's output (progress, end) now; returns the events it makes, to `publish`.

        NOTE: output arriving after the end (a pipelined step ran a finished request once more, as TGI's
        shards do) is dropped here, so a client never sees a token after its last.
        """
        if self.ended or self.cancelled:
            return []
        events: list[InferEvent] = []
        if generation.prefill_tokens is not None and self.request.prefill_logprobs:
            events.append(PrefillEvent(generation.prefill_tokens))
        last = len(generation.tokens) - 1
        for index, token in enumerate(generation.tokens):
            self.generated_ids.append(token.id)
            top = generation.top_tokens[index] if index < len(generation.top_tokens) else ()
            if index == last and generation.generated_text is not None:
                self.ended = True
                events.append(
                    EndEvent(
                        token=token,
                        generated_text=generation.generated_text,
                        queued_at=self.queued_at,
                        started_at=self.started_at or self.queued_at,
                        top_tokens=top,
                    )
                )
            else:
                events.append(TokenEvent(token=token, top_tokens=top))
        return events
