"""Shared test fixtures: real shard and router processes over Unix sockets and loopback HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tgi_async.launcher.processes import ChildProcess, short_tmp_dir, start_bundled_shard, start_router

__all__ = ["short_tmp_dir", "start_shard"]  # shared with tests/telemetry


def start_shard(model_dir: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[ChildProcess, str]:
    return start_bundled_shard(model_dir, *extra, env=env)


@pytest.fixture(scope="session")
def shard(tiny_model_dir: Path) -> Iterator[str]:
    """A bundled shard serving the tiny model for the whole session; yields its rank-0 socket path."""
    child, socket_path = start_shard(tiny_model_dir)
    yield socket_path
    child.stop()


# Every HTTP-level test runs against both schedulers: the async one must pass everything the sync one does.
SCHEDULERS = [s for s in os.environ.get("TGI_ASYNC_TEST_SCHEDULERS", "async,sync").split(",") if s]


@pytest.fixture(scope="session", params=SCHEDULERS)
def scheduler_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def router_factory(tiny_model_dir: Path, scheduler_name: str) -> Iterator:
    """`router_factory(*flags) -> url`: a shard + router with extra router flags, started once per flag set.

    Each router gets its own shard (two routers must never share a shard's batch ids).
    """
    started: dict[tuple[str, ...], str] = {}
    children: list[ChildProcess] = []

    def start(*flags: str) -> str:
        if flags not in started:
            shard_child, socket_path = start_shard(tiny_model_dir)
            children.append(shard_child)
            router_child, url = start_router(
                tiny_model_dir, socket_path, "--scheduler", scheduler_name, *flags
            )
            children.append(router_child)
            started[flags] = url
        return started[flags]

    yield start
    for child in reversed(children):
        child.stop()


@pytest.fixture(scope="session")
def router_url(router_factory) -> str:
    """Base URL of a router + bundled shard on the tiny model, for the session (per scheduler)."""
    return router_factory()
