"""Scheduler settings: TGI's batching flags (same meaning) plus the async policy's knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Policy = Literal["async", "sync"]

# Prompt tokens per shard step in the async policy: on the tiny CPU model a step this size costs about a third
# of what a whole 2,000-token prompt does (docs/benchmarks.md), at ~1 extra step per 768 prompt tokens.
DEFAULT_PREFILL_STEP_TOKENS = 768
# A shard step that takes longer fails its requests (gRPC deadline): long enough for a whole
# --max-batch-prefill-tokens prefill of a 70B model, short enough that a hung shard frees its clients.
DEFAULT_SHARD_CALL_TIMEOUT_S = 60.0
# /health says 503 while a call has been running this long: a hung shard shows within 5 s.
DEFAULT_HEALTH_STALL_S = 4.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: Policy = "async"
    max_batch_prefill_tokens: int = 4096  # prompt tokens one prefill may compute (TGI's meaning)
    max_batch_total_tokens: int = 16000  # KV tokens all running requests may hold (resolved at warmup)
    waiting_served_ratio: float = 1.2  # padded shards: queued/running ratio that interrupts decoding
    max_waiting_tokens: int = 20  # padded shards: decode steps before a small prefill may interrupt
    max_batch_size: int | None = None
    # async only: prompt tokens computed per shard step while others decode (bounds their stall)
    prefill_step_tokens: int = DEFAULT_PREFILL_STEP_TOKENS
    health_stall_s: float = DEFAULT_HEALTH_STALL_S  # a call running longer makes /health 503
