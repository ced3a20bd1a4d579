"""pb.Generation messages from one step's plain results, with TGI's field conventions."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tgi_async.proto import pb
from tgi_async.shard.detokenize import token_texts


def tokens_message(
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    texts: Sequence[str],
    special_ids: Collection[int] | None,
) -> pb.Tokens:
    """pb.Tokens; `special_ids=None` leaves is_special empty (TGI does so for prefill tokens)."""
    is_special = [] if special_ids is None else [i in special_ids for i in token_ids]
    return pb.Tokens(ids=token_ids, logprobs=logprobs, texts=texts, is_special=is_special)


def top_tokens_message(
    tokenizer, top: tuple[list[int], list[float]], special_ids: Collection[int]
) -> list[pb.Tokens]:
    """TGI sends the top-n alternatives of each generated token as one Tokens per token."""
    ids, logprobs = top
    return [tokens_message(ids, logprobs, token_texts(tokenizer, ids) if ids else [], special_ids)]


def generation_message(
    request_id: int,
    token: pb.Tokens,
    prefill: pb.Tokens | None,
    top_tokens: list[pb.Tokens] | None,
    generated_text: pb.GeneratedText | None,
) -> pb.Generation:
    message = pb.Generation(request_id=request_id, tokens=token)
    if prefill is not None:
        message.prefill_tokens.CopyFrom(prefill)
    if top_tokens:
        message.top_tokens.extend(top_tokens)
    if generated_text is not None:
        message.generated_text.CopyFrom(generated_text)
    return message


def generated_text_message(
    text: str, generated_tokens: int, finish_reason: int, seed: int | None
) -> pb.GeneratedText:
    """GeneratedText; `seed` only for sampled requests (unset for greedy, as TGI)."""
    message = pb.GeneratedText(text=text, generated_tokens=generated_tokens, finish_reason=finish_reason)
    if seed is not None:
        message.seed = seed
    return message
