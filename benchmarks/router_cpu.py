"""Router CPU time per streamed token at 1, 32 and 128 concurrent streams (both schedulers, one shard).

    python -m benchmarks.router_cpu [--new-tokens 128] [--concurrency 1 32 128]

CPU time is the router process's user+system seconds (Linux /proc) across the run, divided by the tokens
its clients received over SSE: what the router costs per token, HTTP and JSON included.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.harness import (
    cpu_seconds,
    pin_this_process,
    router_process,
    shard_process,
    stream,
    tiny_model,
)
from benchmarks.sse_client import SSEClient


async def measure(url: str, pid: int, streams: int, new_tokens: int) -> tuple[int, float, float]:
    async with SSEClient(url) as client:
        await client.open(streams)
        cpu_before, start = cpu_seconds(pid), time.perf_counter()
        results = await asyncio.gather(
            *(stream(client, f"stream {i} of the router cpu benchmark", new_tokens) for i in range(streams))
        )
        wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu_before
    return sum(len(r.token_times) for r in results), cpu, wall


async def run(args: argparse.Namespace) -> None:
    pin_this_process()
    model = tiny_model()
    print("| scheduler | streams | tokens | router CPU s | CPU us/token | wall s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    with shard_process(model) as (_, socket_path):
        for policy in ("sync", "async"):
            router_args = ("--scheduler", policy, "--max-concurrent-requests", "1024")
            with router_process(model, socket_path, *router_args) as (child, url):
                await measure(url, child.popen.pid, 8, 16)  # warm-up
                for streams in args.concurrency:
                    tokens, cpu, wall = await measure(url, child.popen.pid, streams, args.new_tokens)
                    print(
                        f"| {policy} | {streams} | {tokens} | {cpu:.2f} | {cpu / tokens * 1e6:.0f} | "
                        f"{wall:.2f} | {tokens / wall:.0f} |"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
