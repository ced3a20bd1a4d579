"""Protobuf <-> plain data for generate.v3 (the only place besides the shard that touches pb messages)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tgi_async.client.types import (
    CachedBatch,
    Generation,
    NewBatch,
    NewRequest,
    ShardInfo,
    StepResult,
    StepTimings,
    WarmupResult,
)
from tgi_async.proto import pb
from tgi_async.scheduler.request import FinishReason, GeneratedText, GenerateRequest, GrammarType, Token

_FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_EOS_TOKEN: "eos_token",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
}

_GRAMMAR_TYPES: dict[GrammarType, int] = {
    "none": pb.GRAMMAR_TYPE_NONE,
    "json": pb.GRAMMAR_TYPE_JSON,
    "regex": pb.GRAMMAR_TYPE_REGEX,
}


def request_to_pb(new: NewRequest) -> pb.Request:
    return _request_message(new.id, new.request, new.blocks, new.slots, new.cache_len, new.chunk_len)


def batch_to_pb(batch: NewBatch) -> pb.Batch:
    return pb.Batch(
        id=batch.id,
        requests=[request_to_pb(r) for r in batch.requests],
        size=len(batch.requests),
        max_tokens=batch.max_tokens,
        max_blocks=batch.max_blocks,
    )


def _request_message(
    request_id: int,
    request: GenerateRequest,
    blocks: Sequence[int] = (),
    slots: Sequence[int] = (),
    cache_len: int = 0,
    chunk_len: int | None = None,
) -> pb.Request:
    sampling, stopping = request.sampling, request.stopping
    message = pb.Request(
        id=request_id,
        inputs=request.inputs,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=request.inputs)]),
        truncate=request.truncate,
        add_special_tokens=request.add_special_tokens,
        prefill_logprobs=request.prefill_logprobs,
        top_n_tokens=request.top_n_tokens,
        parameters=pb.NextTokenChooserParameters(
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            typical_p=sampling.typical_p,
            do_sample=sampling.do_sample,
            seed=sampling.seed,
            repetition_penalty=sampling.repetition_penalty,
            frequency_penalty=sampling.frequency_penalty,
            watermark=sampling.watermark,
            grammar=sampling.grammar,
            grammar_type=_GRAMMAR_TYPES[sampling.grammar_type],
        ),
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=stopping.max_new_tokens,
            stop_sequences=list(stopping.stop_sequences),
            ignore_eos_token=stopping.ignore_eos_token,
        ),
        blocks=list(blocks),
        slots=list(slots),
        cache_len=cache_len,
    )
    if chunk_len is not None:
        message.chunk_len = chunk_len
    if request.adapter_id is not None:
        message.adapter_id = request.adapter_id
    return message


def cached_batch_to_pb(batch: CachedBatch) -> pb.CachedBatch:
    return pb.CachedBatch(
        id=batch.id,
        request_ids=list(batch.request_ids),
        size=batch.size,
        max_tokens=batch.max_tokens,
        current_tokens=batch.current_tokens,
    )


def cached_batch_from_pb(message: pb.CachedBatch) -> CachedBatch:
    return CachedBatch(
        id=message.id,
        request_ids=tuple(message.request_ids),
        size=message.size,
        max_tokens=message.max_tokens,
        current_tokens=message.current_tokens,
    )


def _tokens(message: pb.Tokens) -> tuple[Token, ...]:
    return tuple(
        Token(id=i, text=t, logprob=lp, special=s)
        for i, lp, t, s in zip(message.ids, message.logprobs, message.texts, message.is_special, strict=False)
    )


def _prefill_tokens(message: pb.Tokens) -> tuple[Token, ...]:
    """Prefill tokens may come without logprobs for the first token; pad with NaN like TGI's router."""
    logprobs = list(message.logprobs) + [math.nan] * (len(message.ids) - len(message.logprobs))
    return tuple(
        Token(id=i, text=t, logprob=lp, special=False)
        for i, lp, t in zip(message.ids, logprobs, message.texts, strict=False)
    )


def generation_from_pb(message: pb.Generation) -> Generation:
    generated_text = None
    if message.HasField("generated_text"):
        g = message.generated_text
        generated_text = GeneratedText(
            text=g.text,
            generated_tokens=g.generated_tokens,
            finish_reason=_FINISH_REASONS.get(g.finish_reason, "length"),
            seed=g.seed if g.HasField("seed") else None,
        )
    has_prefill = message.HasField("prefill_tokens") and len(message.prefill_tokens.ids) > 0
    return Generation(
        request_id=message.request_id,
        tokens=_tokens(message.tokens),
        prefill_tokens=_prefill_tokens(message.prefill_tokens) if has_prefill else None,
        top_tokens=tuple(_tokens(t) for t in message.top_tokens),
        generated_text=generated_text,
    )


def step_result_from_pb(response: pb.PrefillResponse | pb.DecodeResponse) -> StepResult:
    return StepResult(
        generations=tuple(generation_from_pb(g) for g in response.generations),
        batch=cached_batch_from_pb(response.batch) if response.HasField("batch") else None,
        timings=StepTimings(
            forward_ns=response.forward_ns,
            decode_ns=response.decode_ns,
            total_ns=response.total_ns,
            concat_ns=response.concat_ns if response.HasField("concat_ns") else None,
        ),
    )


def shard_info_from_pb(message: pb.InfoResponse) -> ShardInfo:
    return ShardInfo(
        requires_padding=message.requires_padding,
        dtype=message.dtype,
        device_type=message.device_type,
        window_size=message.window_size if message.HasField("window_size") else None,
        speculate=message.speculate,
        support_chunking=message.support_chunking,
        use_prefix_caching=message.use_prefix_caching,
        attention_impl=message.attention_impl,
        block_size=message.block_size,
    )


def warmup_from_pb(message: pb.WarmupResponse) -> WarmupResult:
    supported = message.max_supported_total_tokens if message.HasField("max_supported_total_tokens") else None
    return WarmupResult(
        max_supported_total_tokens=supported,
        max_input_tokens=message.max_input_tokens,
        max_total_tokens=message.max_total_tokens,
    )
