"""Whole stacks started as users start them: `tgi-async launch` (bundled or TGI's shard) + real clients."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.paths import CACHE_DIR
from tgi_async.launcher.processes import (
    ChildProcess,
    free_port,
    short_tmp_dir,
    spawn,
    tgi_async_command,
    wait_for_http,
)

# NOTE: a module whose clients hold many connections at once runs its async tests on an event loop of its own,
# as a real client runs in a process of its own, not on pytest's session loop. Six full-suite runs hung there:
# an AsyncOpenAI client an earlier test left open was collected, its sockets closed by the collector, and the
# aclose() that openai's __del__ then schedules on the running loop aborted those transports, removing the
# readers of their old file descriptors: by then other clients' sockets (cpython#130141). Every async client
# is closed now; a loop of its own keeps such a leak elsewhere from reaching these modules.
OWN_EVENT_LOOP = pytest.mark.asyncio(loop_scope="module")


def tgi_shard_available() -> str | None:
    """Why TGI's own shard cannot be used here, or None when it can."""
    binary = os.environ.get("TGI_SHARD_BIN")
    if binary:
        return None if shutil.which(binary) or Path(binary).exists() else f"TGI_SHARD_BIN={binary} not found"
    if importlib.util.find_spec("text_generation_server") is not None:
        return None
    why = CACHE_DIR / "tgi-shard" / ".unavailable"  # `make tgi-shard` writes why it could not build it
    if why.exists():
        return f"TGI's shard could not be built here: {why.read_text().strip()}"
    return "TGI's text-generation-server is not installed here (`make test` builds it; or set TGI_SHARD_BIN)"


@pytest.fixture(scope="session")
def tgi_model_dir(tiny_model_dir: Path) -> Path:
    """The tiny model in the form TGI's shard (transformers 4.x) reads: its build's `adapt-model`, if any."""
    binary = os.environ.get("TGI_SHARD_BIN")
    adapt = Path(binary).parent / "adapt-model" if binary else None
    if adapt is None or not adapt.exists():
        return tiny_model_dir
    target = CACHE_DIR / "tgi-model-seed0"
    if not (target / "config.json").exists():
        subprocess.run([str(adapt), str(tiny_model_dir), str(target)], check=True, capture_output=True)
    return target


async def leave_streams(url: str, count: int) -> None:
    """`count` clients that each leave their stream after its first token."""
    body = {"inputs": "a client that leaves", "parameters": {"max_new_tokens": 200}}
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(count):
            async with client.stream("POST", f"{url}/generate_stream", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break


def launch(model_dir: Path, *flags: str) -> tuple[ChildProcess, str]:
    """`tgi-async launch` on free ports; returns the launcher and the router's base URL once healthy."""
    port = free_port()
    directory = short_tmp_dir()
    argv = tgi_async_command(
        "launch",
        "--model-id",
        str(model_dir),
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--prometheus-port",
        str(free_port()),
        "--shard-uds-path",
        os.path.join(directory, "shard"),
        *flags,
    )
    child = spawn("launcher", argv, log_path=Path(directory) / "launch.log")
    wait_for_http(child, f"http://127.0.0.1:{port}/health", timeout=300)
    return child, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=["async", "sync"])
def launched(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[str]:
    """The bundled stack under each scheduler, launched like `make run` does."""
    # 256 concurrent requests allowed: the 200-request test must not meet TGI's default limit of 128
    flags = ("--shard", "bundled", "--scheduler", request.param, "--max-concurrent-requests", "256")
    child, url = launch(tiny_model_dir, *flags)
    yield url
    assert child.stop(timeout=30) == 0, child.log_tail()
