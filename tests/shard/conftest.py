"""Fixtures for the bundled shard's tests: one real shard process for the package, a client, a reference."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from shard_helpers import MAX_PREFILL_TOKENS, Reference, router_warmup_request

from tgi_async.launcher.processes import (
    ChildProcess,
    short_tmp_dir,
    spawn,
    tgi_async_command,
    wait_for_path,
)
from tgi_async.proto import ShardStub


def start_bundled_shard(model_dir: Path, *extra: str, env: dict[str, str] | None = None):
    """`tgi-async shard serve` on a fresh short socket path; returns (process, rank-0 socket path)."""
    directory = short_tmp_dir("tgia-shard-")
    uds = os.path.join(directory, "shard")
    child: ChildProcess = spawn(
        "shard",
        tgi_async_command("shard", "serve", str(model_dir), "--uds-path", uds, *extra),
        log_path=Path(directory) / "shard.log",
        env=env,
    )
    wait_for_path(child, f"{uds}-0")
    return child, f"{uds}-0"


@pytest.fixture(scope="session", params=["--overlap", "--no-overlap"], ids=["overlap", "no-overlap"])
def bundled_shard(tiny_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bundled shard for the shard tests only (they warm it up and clear its cache); every test runs
    against the overlapped pipeline and against one forward at a time."""
    child, socket_path = start_bundled_shard(tiny_model_dir, request.param)
    yield socket_path
    child.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(bundled_shard: str) -> AsyncIterator[ShardStub]:
    async with grpc.aio.insecure_channel(f"unix://{bundled_shard}") as channel:
        client = ShardStub(channel)
        await client.Warmup(router_warmup_request(None, MAX_PREFILL_TOKENS, None))
        yield client


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)
