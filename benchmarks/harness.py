"""What the benchmarks share: a shard and routers as real processes, SSE streams with timestamps, metrics."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.sse_client import SSEClient
from benchmarks.stats import median, percentile  # noqa: F401 (the benchmarks' import point)
from tgi_async.launcher.processes import ChildProcess, start_bundled_shard, start_router
from tgi_async.tiny_model import cached_tiny_model

CACHE_DIR = Path(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).resolve().parents[1] / ".cache"))


def tiny_model() -> Path:
    return cached_tiny_model(CACHE_DIR)


# NOTE: on a 2-core machine the shard, the router and the load generator fight for the same cores, which
# measures the OS scheduler, not ours. Pinning the shard to CPU 0 (standing in for the accelerator) and the
# router and the clients to the other CPUs reproduces a serving node's shape: compute on one side, the
# router's CPU work on the other. Disable with TGI_ASYNC_BENCH_PIN=0.
PIN = (os.cpu_count() or 1) >= 2 and os.environ.get("TGI_ASYNC_BENCH_PIN", "1") != "0"
SHARD_CPUS = {0} if PIN else None
ROUTER_CPUS = set(range(1, os.cpu_count() or 1)) if PIN else None


def pin_this_process() -> None:
    """Put the load generator beside the router, away from the shard's CPU."""
    if ROUTER_CPUS is not None:
        os.sched_setaffinity(0, ROUTER_CPUS)


@contextlib.contextmanager
def shard_process(model: Path, *extra: str) -> Iterator[tuple[ChildProcess, str]]:
    child, socket_path = start_bundled_shard(model, *extra, cpus=SHARD_CPUS)
    try:
        yield child, socket_path
    finally:
        child.stop()


@contextlib.contextmanager
def router_process(
    model: Path, shard_socket: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ChildProcess, str]]:
    """A router on `shard_socket`; `env` (e.g. PYTHONPATH of another checkout) adds to this environment."""
    child, url = start_router(model, shard_socket, *args, cpus=ROUTER_CPUS, env=env)
    try:
        yield child, url
    finally:
        child.stop()


@dataclass
class Stream:
    """One /generate_stream call: when it was sent and when each token event arrived (perf_counter s)."""

    sent: float
    token_times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent

    def gaps(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        times = self.token_times
        return [b - a for a, b in itertools.pairwise(times) if start <= a and b <= end]


async def stream(client: SSEClient, prompt: str, max_new_tokens: int, record: Stream | None = None) -> Stream:
    """Stream one /generate_stream request; token events are timed as they arrive (no JSON decoding).

    Pass `record` to keep the timings of a stream that will be cancelled.
    """
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}
    record = record or Stream(sent=0.0)

    def on_event(arrived: float, event: bytes) -> None:
        if event.startswith(b'data: {"error"'):
            record.error = event.decode()
        elif event.startswith(b"data:"):
            record.token_times.append(arrived)

    record.sent = time.perf_counter()
    status = await client.post("/generate_stream", body, on_event)
    if status != 200 and record.error is None:
        record.error = f"HTTP {status}"
    return record


def scrape(url: str) -> dict[str, float]:
    """The router's /metrics as {series: value} (labels kept in the key)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process's threads have run, in nanoseconds' precision (Linux schedstat).

    NOTE: threads that exit in between are not counted; the router's threads live as long as it does.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9
