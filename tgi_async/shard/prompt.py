"""A request's prompt as token ids, the way TGI's shards read it (no torch: the strict shard uses it too)."""

from __future__ import annotations

from tgi_async.proto import pb


class BatchError(ValueError):
    """Bad input from the router (gRPC INVALID_ARGUMENT); nothing was changed."""


def prompt_text(request: pb.Request) -> str:
    """The one text chunk of `input_chunks` (images are ignored; TGI reads nothing else)."""
    texts = [chunk.text for chunk in request.input_chunks.chunks if chunk.WhichOneof("chunk") == "text"]
    if not texts:
        raise BatchError(f"request {request.id}: input_chunks has no text chunk")
    if len(texts) > 1:
        raise BatchError(f"request {request.id}: input_chunks has {len(texts)} text chunks, expected one")
    return texts[0]


def prompt_ids(request: pb.Request, tokenizer) -> list[int]:
    """The prompt's token ids: `truncate` keeping the last N tokens (0: all), special tokens as
    `add_special_tokens` says (a tokenizer loaded with truncation_side="left", as TGI's)."""
    truncate = request.truncate or None
    encoded = tokenizer(
        prompt_text(request),
        add_special_tokens=request.add_special_tokens,
        truncation=truncate is not None,
        max_length=truncate,
    )
    ids = list(encoded["input_ids"])
    if not ids:
        raise BatchError(f"request {request.id}: the prompt is empty after tokenization")
    return ids
