"""Tracing's cost end to end: a router and bundled shard serve the same load with tracing off and on
(--otlp-endpoint pointed at an in-process OTLP/gRPC receiver, default batch export settings), alternately,
several times.

    .venv/bin/python -m benchmarks.tracing_e2e [--streams 8] [--tokens 256] [--rounds 3]

Reports per configuration (median over rounds), per decode step (the router's decode calls): wall time, the
router's and the shard's CPU time (from /proc: contention-proof, unlike wall time on a busy machine), and
the mean time between two tokens of a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from pathlib import Path

import httpx

from tests.telemetry.conftest import TracedStack, start_traced_stack, stop_stack
from tests.telemetry.otlp_receiver import OtlpReceiver
from tgi_async.tiny_model import cached_tiny_model

_DECODES = re.compile(r'^tgi_batch_inference_count\{method="decode"\} (\S+)$', re.M)


async def _stream(client: httpx.AsyncClient, tokens: int, gaps: list[float]) -> None:
    body = {"inputs": "tracing overhead", "parameters": {"max_new_tokens": tokens}}
    last = None
    async with client.stream("POST", "/generate_stream", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now


async def _load(url: str, streams: int, tokens: int) -> tuple[float, list[float]]:
    gaps: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(_stream(client, tokens, gaps) for _ in range(streams)))
        return time.perf_counter() - start, gaps


def _decode_calls(stack: TracedStack) -> float:
    match = _DECODES.search(httpx.get(stack.url + "/metrics").text)
    assert match is not None, "tgi_batch_inference_count{method=decode} missing from /metrics"
    return float(match.group(1))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(stack: TracedStack, streams: int, tokens: int) -> tuple[float, float, float, float]:
    """ms per decode step: wall time, router CPU, shard CPU; and mean ms between two tokens of a stream."""
    asyncio.run(_load(stack.url, streams, 8))  # warm up
    before = _decode_calls(stack)
    router_cpu, shard_cpu = _cpu_s(stack.router.popen.pid), _cpu_s(stack.shard.popen.pid)
    wall, gaps = asyncio.run(_load(stack.url, streams, tokens))
    router_cpu = _cpu_s(stack.router.popen.pid) - router_cpu
    shard_cpu = _cpu_s(stack.shard.popen.pid) - shard_cpu
    steps = _decode_calls(stack) - before
    return wall / steps * 1e3, router_cpu / steps * 1e3, shard_cpu / steps * 1e3, statistics.mean(gaps) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scheduler", default="async")
    args = parser.parse_args()
    receiver = OtlpReceiver(keep=False).start()
    model = cached_tiny_model(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).parents[2] / ".cache"))
    results: dict[str, list[tuple[float, ...]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            endpoint = receiver if mode == "on" else None
            stack = start_traced_stack(
                model, endpoint, "--scheduler", args.scheduler, with_file=False, env={}
            )
            try:
                results[mode].append(run(stack, args.streams, args.tokens))
            finally:
                stop_stack(stack)
    assert receiver.exports > 0, "no spans reached the receiver"
    receiver.stop()
    print(
        f"{args.streams} streams x {args.tokens} tokens, --scheduler {args.scheduler}, {args.rounds} rounds:"
    )
    print("tracing  wall ms/step  router CPU ms/step  shard CPU ms/step  ms between tokens")
    for mode, rows in results.items():
        wall, router, shard, gap = (statistics.median(r[i] for r in rows) for i in range(4))
        print(f"{mode:7s}  {wall:12.3f}  {router:18.3f}  {shard:17.3f}  {gap:17.3f}")


if __name__ == "__main__":
    main()
