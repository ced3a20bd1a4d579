"""Tokenization, chat templating and token-list bodies in worker processes (TGI's --validation-workers).

Why processes, not threads: `tokenizers` holds the GIL in `Encoding` methods and while it turns an encoding
into Python lists (1 MB of text: ~0.9 s to encode, 0.1 s for the ids, 0.13 s to truncate), and a 1 MB
/tokenize answer is 650k tokens and 32 MB of JSON; in any thread of the router each of these stops every
stream. A worker sends back only what the router needs: a token count and at most `max_input_tokens` ids,
a rendered prompt, or the finished response bytes.

The functions taking a tokenizer run in the router too, for inputs short enough to be cheaper inline.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, TypeVar

from tgi_async.api.chat_template import ChatTemplate, TemplateKey
from tgi_async.api.openai_requests import Message, Tool
from tgi_async.memory import map_large_allocations, release_freed_memory
from tgi_async.scheduler.request import InferError

T = TypeVar("T")
# After a job on this many characters a worker hands its freed memory back to the OS.
TRIM_AFTER_CHARS = 256 * 1024
TRIM_DELAY_S = 1.0
# NOTE: workers yield the CPU to the router's event loop when both want it: a second of tokenization must
# not delay the next token of every stream by a scheduler time slice.
WORKER_NICENESS = 5


@dataclass(frozen=True, slots=True)
class Encoded:
    """What validation needs of an encoding: its length, and the ids it will schedule (None: too long)."""

    length: int
    ids: tuple[int, ...] | None


def encode(
    tokenizer: Any, inputs: str, add_special_tokens: bool, truncate: int | None, max_input_tokens: int
) -> Encoded:
    """`inputs` encoded; the last `min(length, truncate)` ids, unless more than `max_input_tokens`."""
    encoding = tokenizer.encode(inputs, add_special_tokens=add_special_tokens)
    length = len(encoding)  # NOTE: no list of ids yet: a rejected input never needs one
    keep = length if truncate is None else min(length, truncate)
    if keep > max_input_tokens:
        return Encoded(length, None)
    ids = encoding.ids
    return Encoded(length, tuple(ids[length - keep :]))


def token_spans(
    ids: list[int], offsets: list[tuple[int, int]], inputs: str
) -> list[tuple[int, str, int, int]]:
    """(id, text, start, stop) per token, with TGI's byte offsets (the Rust tokenizer's) into UTF-8
    `inputs` and the text between them."""
    if len(offsets) != len(ids):
        return [(i, "", 0, 0) for i in ids]
    raw = inputs.encode()
    byte_at = None  # ASCII: character offsets are byte offsets
    if len(raw) != len(inputs):
        byte_at = [0]
        for char in inputs:
            byte_at.append(byte_at[-1] + len(char.encode()))
    spans = []
    for token_id, (start, stop) in zip(ids, offsets, strict=True):
        if byte_at is not None:
            start, stop = byte_at[min(start, len(inputs))], byte_at[min(stop, len(inputs))]
        spans.append((token_id, raw[start:stop].decode(errors="replace"), start, stop))
    return spans


def tokens_json(tokenizer: Any, inputs: str, add_special_tokens: bool) -> bytes:
    """/tokenize's body: `[{"id","text","start","stop"}, ...]` as serde_json writes it.

    NOTE: written directly, not through pydantic models: 650k tokens take 0.6 s instead of 3 s. Python's
    `encode_basestring` escapes exactly as serde_json does (`\\n`, `\\u001f`, raw UTF-8 otherwise).
    """
    encoding = tokenizer.encode(inputs, add_special_tokens=add_special_tokens)
    items = [
        f'{{"id":{i},"text":{encode_basestring(text)},"start":{start},"stop":{stop}}}'
        for i, text, start, stop in token_spans(encoding.ids, encoding.offsets, inputs)
    ]
    return ("[" + ",".join(items) + "]").encode()


def chat_tokens_json(tokenizer: Any, templated_text: str) -> bytes:
    """/chat_tokenize's body (TGI's `ChatTokenizeResponse`) for an already templated prompt."""
    tokens = tokens_json(tokenizer, templated_text, False)
    return (
        b'{"tokenize_response":'
        + tokens
        + b',"templated_text":'
        + encode_basestring(templated_text).encode()
        + b"}"
    )


# ---- in a worker process --------------------------------------------------------------------------------

_worker_tokenizer: Any = None
_worker_templates: dict[TemplateKey, ChatTemplate] = {}


def _start_worker(tokenizer_json: str) -> None:
    from tokenizers import Tokenizer

    global _worker_tokenizer
    os.nice(WORKER_NICENESS)
    map_large_allocations()
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _in_worker(size: int, job: Callable[..., T], *args: Any) -> T:
    try:
        return job(*args)
    finally:
        if size >= TRIM_AFTER_CHARS:
            # NOTE: a moment later, not now: the answer is still to be pickled and sent (32 MB, twice).
            threading.Timer(TRIM_DELAY_S, release_freed_memory).start()


def _encode_job(
    inputs: str, add_special_tokens: bool, truncate: int | None, max_input_tokens: int
) -> Encoded:
    return _in_worker(
        len(inputs), encode, _worker_tokenizer, inputs, add_special_tokens, truncate, max_input_tokens
    )


def _tokens_json_job(inputs: str, add_special_tokens: bool) -> bytes:
    return _in_worker(len(inputs), tokens_json, _worker_tokenizer, inputs, add_special_tokens)


def _chat_tokens_json_job(templated_text: str) -> bytes:
    return _in_worker(len(templated_text), chat_tokens_json, _worker_tokenizer, templated_text)


def _render_job(key: TemplateKey, messages: list[Message], tools: tuple[list[Tool], str] | None) -> str:
    template = _worker_templates.get(key)
    if template is None:
        template = _worker_templates[key] = ChatTemplate(*key)
    return template.apply(messages, tools)


def _ready() -> None:
    """A job that only proves a worker is up."""


# ---- in the router ------------------------------------------------------------------------------------


class TokenizerPool:
    """`workers` processes with the router's tokenizer; at most `max_waiting` jobs queued or running.

    Beyond that bound a job is refused as "Model is overloaded" (429) instead of holding its input in
    memory: generation requests hold a permit while they validate, so only a flood of /tokenize requests
    (which TGI queues without bound) meets it.
    """

    def __init__(self, tokenizer: Any, workers: int, max_waiting: int):
        self._tokenizer = tokenizer
        self._workers = max(1, workers)
        self._max_waiting = max(1, max_waiting)
        self._waiting = 0
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self._workers,
                # NOTE: spawn, not fork: the router runs gRPC and uvloop threads, which fork would copy
                # mid-flight.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self._tokenizer.to_str(),),
            )
        return self._executor

    async def _run(self, job: Callable[..., T], *args: Any) -> T:
        if self._waiting >= self._max_waiting:
            raise InferError("Model is overloaded", "overloaded")
        self._waiting += 1
        try:
            executor = self._pool()
            return await asyncio.wrap_future(executor.submit(job, *args))
        except BrokenProcessPool as exc:  # a worker died (killed, out of memory): start afresh next time
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise InferError(f"tokenizer error {exc}", "validation") from exc
        finally:
            self._waiting -= 1

    async def start(self) -> None:
        """Start every worker now, so the first large request does not wait for one."""
        executor = self._pool()
        await asyncio.gather(*(asyncio.wrap_future(executor.submit(_ready)) for _ in range(self._workers)))

    async def encode(
        self, inputs: str, add_special_tokens: bool, truncate: int | None, max_input_tokens: int
    ) -> Encoded:
        return await self._run(_encode_job, inputs, add_special_tokens, truncate, max_input_tokens)

    async def tokens_json(self, inputs: str, add_special_tokens: bool) -> bytes:
        return await self._run(_tokens_json_job, inputs, add_special_tokens)

    async def chat_tokens_json(self, templated_text: str) -> bytes:
        return await self._run(_chat_tokens_json_job, templated_text)

    async def render(
        self, template: ChatTemplate, messages: list[Message], tools: tuple[list[Tool], str] | None
    ) -> str:
        return await self._run(_render_job, template.key, messages, tools)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
