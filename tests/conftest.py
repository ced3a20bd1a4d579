"""Shared fixtures: the tiny model (built once per machine) and real shard processes over Unix sockets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tgi_async.launcher.processes import ChildProcess, spawn, tgi_async_command, wait_for_path

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("TGI_ASYNC_CACHE", REPO / ".cache"))


def tiny_model_path(seed: int = 0) -> Path:
    """Build the tiny model once under the cache dir (a marker file says it is complete)."""
    from tgi_async.tiny_model import make_tiny_model

    directory = CACHE_DIR / f"tiny-model-seed{seed}"
    if not (directory / "tgi_async_tiny.json").exists():
        make_tiny_model(directory, seed=seed)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return tiny_model_path()


def short_tmp_dir() -> str:
    """A short directory for Unix sockets (their paths are limited to ~100 bytes)."""
    return tempfile.mkdtemp(prefix="tgia-", dir="/tmp")


def start_shard(model_dir: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[ChildProcess, str]:
    """Start `tgi-async shard serve` on a fresh socket; returns the process and the rank-0 socket path."""
    directory = short_tmp_dir()
    uds = os.path.join(directory, "shard")
    child = spawn(
        "shard",
        tgi_async_command("shard", "serve", str(model_dir), "--uds-path", uds, *extra),
        log_path=Path(directory) / "shard.log",
        env=env,
    )
    wait_for_path(child, f"{uds}-0")
    return child, f"{uds}-0"


@pytest.fixture(scope="session")
def shard(tiny_model_dir: Path) -> Iterator[str]:
    """A bundled shard serving the tiny model for the whole session; yields its rank-0 socket path."""
    child, socket_path = start_shard(tiny_model_dir)
    yield socket_path
    child.stop()
