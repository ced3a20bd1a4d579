"""Build the scheduler a policy name asks for."""

from __future__ import annotations

from tgi_async.client.sharded_client import ShardedClient
from tgi_async.client.types import ShardInfo
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.scheduler.core import SchedulerCore


def create_scheduler(client: ShardedClient, info: ShardInfo, config: SchedulerConfig) -> SchedulerCore:
    if config.policy == "sync":
        from tgi_async.scheduler.sync_policy import SyncScheduler

        return SyncScheduler(client, info, config)
    from tgi_async.scheduler.async_policy import AsyncScheduler

    return AsyncScheduler(client, info, config)
