"""What the benchmarks share: a shard and routers as real processes, SSE streams with timestamps, metrics."""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tgi_async.launcher.processes import ChildProcess, start_bundled_shard, start_router
from tgi_async.tiny_model import cached_tiny_model

CACHE_DIR = Path(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).resolve().parents[1] / ".cache"))


def tiny_model() -> Path:
    return cached_tiny_model(CACHE_DIR)


@contextlib.contextmanager
def shard_process(model: Path, *extra: str) -> Iterator[str]:
    child, socket_path = start_bundled_shard(model, *extra)
    try:
        yield socket_path
    finally:
        child.stop()


@contextlib.contextmanager
def router_process(model: Path, shard_socket: str, *args: str) -> Iterator[tuple[ChildProcess, str]]:
    child, url = start_router(model, shard_socket, *args)
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


async def stream(
    client: httpx.AsyncClient, url: str, prompt: str, max_new_tokens: int, record: Stream | None = None
) -> Stream:
    """Stream one request; token events are timed as they arrive (no JSON decoding on the hot path).

    Pass `record` to keep the timings of a stream that will be cancelled.
    """
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}
    record = record or Stream(sent=0.0)
    record.sent = time.perf_counter()
    async with client.stream("POST", f"{url}/generate_stream", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                if '"error"' in line[:12]:
                    record.error = line
                    break
                record.token_times.append(time.perf_counter())
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
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
