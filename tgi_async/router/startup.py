"""Router start-up as TGI does it: connect, clear, Info, Warmup, then resolve the token limits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tgi_async.client.shard_client import ShardError
from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import ShardInfo, WarmupResult

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The router cannot serve with these flags and shards; the message says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int
    max_batch_total_tokens: int


def resolve_limits(
    warmup: WarmupResult,
    info: ShardInfo,
    max_input_tokens: int | None,
    max_total_tokens: int | None,
    max_batch_prefill_tokens: int,
    max_batch_total_tokens: int | None,
) -> Limits:
    """TGI v3's rules: shards that know their KV capacity set max_batch_total_tokens, others use the flag."""
    if max_input_tokens is not None and max_input_tokens != warmup.max_input_tokens:
        raise StartupError(
            f"shard answered max_input_tokens={warmup.max_input_tokens}, asked {max_input_tokens}"
        )
    if max_total_tokens is not None and max_total_tokens != warmup.max_total_tokens:
        raise StartupError(
            f"shard answered max_total_tokens={warmup.max_total_tokens}, asked {max_total_tokens}"
        )
    if warmup.max_supported_total_tokens is None:
        batch_total = max_batch_total_tokens or max(16000, warmup.max_total_tokens, max_batch_prefill_tokens)
        logger.warning("Model does not support automatic max batch total tokens")
    else:
        if max_batch_total_tokens is not None:
            logger.warning("`--max-batch-total-tokens` is ignored: the shard sized its KV cache at warmup")
        if warmup.max_total_tokens > warmup.max_supported_total_tokens:
            raise StartupError(f"Not enough memory to handle `max_total_tokens={warmup.max_total_tokens}`")
        batch_total = warmup.max_supported_total_tokens
    limits = Limits(warmup.max_input_tokens, warmup.max_total_tokens, batch_total)
    if limits.max_input_tokens >= limits.max_total_tokens:
        raise StartupError("`max_input_tokens` must be < `max_total_tokens`")
    if limits.max_input_tokens > max_batch_prefill_tokens and not info.support_chunking:
        raise StartupError(
            "`max_batch_prefill_tokens` must be >= `max_input_tokens`. "
            f"Given: {max_batch_prefill_tokens} and {limits.max_input_tokens}"
        )
    if max_batch_prefill_tokens > batch_total:
        raise StartupError(
            "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {max_batch_prefill_tokens} and {batch_total}"
        )
    if limits.max_total_tokens > batch_total:
        raise StartupError(
            "`max_total_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {limits.max_total_tokens} and {batch_total}"
        )
    return limits


async def connect(
    master_uds_path: str, call_timeout: float | None = None, timeout: float = 60.0
) -> ShardedClient:
    """Connect to the master shard (retrying while it starts) and to every shard it lists; `call_timeout`:
    the deadline of each step call."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await ShardedClient.connect(master_uds_path, call_timeout)
        except ShardError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"Unable to connect to the Python model shards: {exc}") from None
            await asyncio.sleep(0.2)


async def warm_up(
    client: ShardedClient,
    max_input_tokens: int | None,
    max_prefill_tokens: int,
    max_total_tokens: int | None,
    max_batch_size: int | None,
) -> tuple[ShardInfo, WarmupResult]:
    try:
        await client.clear_cache(None)
        info = await client.info()
        logger.info("Warming up model")
        warmup = await client.warmup(max_input_tokens, max_prefill_tokens, max_total_tokens, max_batch_size)
    except ShardError as exc:
        raise StartupError(f"Unable to warmup the Python model shards: {exc}") from None
    return info, warmup
