"""Plain data the scheduler exchanges with the shard client; protobuf stays inside tgi_async/client/."""

from __future__ import annotations

from dataclasses import dataclass

from tgi_async.scheduler.request import GeneratedText, GenerateRequest, Token


@dataclass(frozen=True, slots=True)
class ShardInfo:
    requires_padding: bool  # padded batches (TGI's CPU/CausalLM shards): no KV blocks
    dtype: str
    device_type: str
    window_size: int | None
    speculate: int
    support_chunking: bool  # Prefill accepts chunk_len and cached_batch
    use_prefix_caching: bool
    attention_impl: str
    block_size: int
    orders_calls: bool = False  # starts numbered calls in order (proto/call_order.py); TGI's shards do not


@dataclass(frozen=True, slots=True)
class WarmupResult:
    max_supported_total_tokens: int | None  # None: the shard cannot tell (padded shards)
    max_input_tokens: int
    max_total_tokens: int


@dataclass(frozen=True, slots=True)
class CachedBatch:
    """A batch living in the shards' cache."""

    id: int
    request_ids: tuple[int, ...]
    size: int
    max_tokens: int
    current_tokens: int  # tokens in its next forward (decodes + pending prompt chunks)


@dataclass(frozen=True, slots=True)
class Generation:
    """What one step produced for one request."""

    request_id: int
    tokens: tuple[Token, ...]  # usually one; more with speculation
    prefill_tokens: tuple[Token, ...] | None
    top_tokens: tuple[tuple[Token, ...], ...]  # one tuple per token in `tokens`
    generated_text: GeneratedText | None  # set when the request finished at this step


@dataclass(frozen=True, slots=True)
class StepTimings:
    forward_ns: int
    decode_ns: int
    total_ns: int  # the shard's whole handler time: what "shard busy" sums
    concat_ns: int | None


@dataclass(frozen=True, slots=True)
class StepResult:
    generations: tuple[Generation, ...]
    batch: CachedBatch | None  # None: every request of the batch finished, the shard dropped it
    timings: StepTimings


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request entering the shards with a Prefill, with its KV placement (empty for padded shards)."""

    id: int
    request: GenerateRequest
    blocks: tuple[int, ...] = ()
    slots: tuple[int, ...] = ()
    cache_len: int = 0  # prompt tokens already in the KV cache
    chunk_len: int | None = None  # prompt tokens to compute in this first prefill (chunking shards)


@dataclass(frozen=True, slots=True)
class NewBatch:
    id: int
    requests: tuple[NewRequest, ...]
    max_tokens: int  # tokens the batch may grow to
    max_blocks: int
