"""Tracing's cost end to end: a router and bundled shard serve the same load with tracing off and on
(--otlp-endpoint pointed at an in-process OTLP/gRPC receiver), alternately, several times.

    .venv/bin/python -m tests.telemetry.bench_e2e_overhead [--streams 8] [--tokens 256] [--rounds 3]

Reports per configuration (median over rounds): wall time per decode step (the run's wall time divided by
the router's decode calls), and the mean time between two tokens of a stream.
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
    return float(_DECODES.search(httpx.get(stack.url + "/metrics").text).group(1))


def run(stack: TracedStack, streams: int, tokens: int) -> tuple[float, float]:
    """(ms per decode step, mean ms between two tokens of a stream)"""
    asyncio.run(_load(stack.url, streams, 8))  # warm up
    before = _decode_calls(stack)
    wall, gaps = asyncio.run(_load(stack.url, streams, tokens))
    steps = _decode_calls(stack) - before
    return wall / steps * 1e3, statistics.mean(gaps) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scheduler", default="async")
    args = parser.parse_args()
    receiver = OtlpReceiver().start()
    model = cached_tiny_model(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).parents[2] / ".cache"))
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            endpoint = receiver if mode == "on" else None
            stack = start_traced_stack(model, endpoint, "--scheduler", args.scheduler, with_file=False)
            try:
                results[mode].append(run(stack, args.streams, args.tokens))
            finally:
                stop_stack(stack)
    receiver.stop()
    print(
        f"{args.streams} streams x {args.tokens} tokens, --scheduler {args.scheduler}, {args.rounds} rounds"
    )
    for mode, rows in results.items():
        step = statistics.median(r[0] for r in rows)
        gap = statistics.median(r[1] for r in rows)
        print(f"tracing {mode:3s}: {step:6.3f} ms per decode step, {gap:6.3f} ms between tokens  {rows}")


if __name__ == "__main__":
    main()
