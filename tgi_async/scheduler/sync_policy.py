"""`--scheduler sync`: TGI v3's batching loop, step for step, as the baseline.

One task alternates: admit a batch, prefill it, then decode until the batch empties, admitting more between
decode steps (joined by Prefill(cached_batch) on chunking shards, by a separate prefill + Decode([a, b])
otherwise). Every call waits for the previous one and for its own bookkeeping: the shard idles meanwhile.
"""

from __future__ import annotations

import logging
import math

from tgi_async import metrics
from tgi_async.scheduler.admission import Budget
from tgi_async.scheduler.core import SchedulerCore

logger = logging.getLogger(__name__)


class SyncScheduler(SchedulerCore):
    def _loops(self):
        return [("sync_batching_loop", self._batching_loop)]

    async def _batching_loop(self) -> None:
        config, state, steps = self.config, self.state, self.steps
        chunking = self.info.support_chunking
        while True:
            await self._wait_for_work()
            served = False
            while admitted := state.admit(
                Budget(
                    prefill_tokens=config.max_batch_prefill_tokens,
                    total_tokens=config.max_batch_total_tokens,
                    max_size=self.max_rows,
                )
            ):
                served = True
                new_batch, _, _ = admitted
                # NOTE: one batch, as TGI's; several only after a failed Prefill whose requests prefilled
                # apart (scheduler/isolation.py): the next Decode merges them.
                batches = await steps.prefill(new_batch)
                waiting_tokens = 1
                while batches:
                    size = sum(b.size for b in batches)
                    max_tokens = sum(b.max_tokens for b in batches)
                    metrics.BATCH_CURRENT_SIZE.set(size)
                    metrics.BATCH_CURRENT_MAX_TOKENS.set(max_tokens)
                    token_budget = max(config.max_batch_total_tokens - max_tokens, 0)
                    # NOTE: TGI's rules, plus a cap on the batch (max_rows: no forward larger than Warmup's)
                    max_size = max(self.max_rows - size, 0)
                    if chunking:
                        current_tokens = sum(b.current_tokens for b in batches)
                        budget = Budget(
                            prefill_tokens=max(config.max_batch_prefill_tokens - current_tokens, 0),
                            total_tokens=token_budget,
                            max_size=max_size,
                        )
                    else:
                        min_size = (
                            None
                            if waiting_tokens >= config.max_waiting_tokens
                            else math.floor(size * config.waiting_served_ratio)
                        )
                        budget = Budget(config.max_batch_prefill_tokens, token_budget, min_size, max_size)
                    joined = state.admit(budget) if state.waiting else None
                    if joined is not None:
                        new_batch, _, _ = joined
                        reason = (
                            "chunking"
                            if chunking
                            else ("backpressure" if budget.min_size is not None else "wait_exceeded")
                        )
                        metrics.BATCH_CONCAT.labels(reason=reason).inc()
                        if chunking:
                            batches = await steps.prefill(new_batch, cached_batch=batches[0]) + batches[1:]
                            if not batches:
                                break
                        else:
                            batches += await steps.prefill(new_batch)
                        waiting_tokens = 1
                    cached = await steps.decode(batches)
                    batches = [cached] if cached is not None else []
                    waiting_tokens += 1
                metrics.BATCH_CURRENT_SIZE.set(0)
                metrics.BATCH_CURRENT_MAX_TOKENS.set(0)
            if not served:
                await self._wait_for_change()  # the queue head does not fit: never spin
