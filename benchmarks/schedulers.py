"""Async vs sync scheduler, side by side on ONE shard process, through the HTTP API.

    python -m benchmarks.schedulers [--scenario decode|mixed|both] [--streams 64] [--new-tokens 256]

For each policy a router starts against the same bundled shard (one at a time: two routers must not share a
shard's batches), runs the scenario with real HTTP streaming clients, and stops. Ratios are async/sync.
  decode: N concurrent streams of M new tokens -> tokens/s, and shard busy fraction = shard handler seconds
          (tgi_async_shard_busy_seconds) / wall seconds.
  mixed:  streams decoding while prompts of P tokens arrive every I ms -> p99 inter-token latency of the
          decoding streams while prompts arrive, TTFT p50 of the arriving prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import httpx
from transformers import AutoTokenizer

from benchmarks.harness import (
    Stream,
    median,
    percentile,
    router_process,
    scrape,
    shard_process,
    stream,
    tiny_model,
)

WORDS = "the batch decode prefill stream router shard queue kernel tensor cache block slot".split()


def prompt_of(tokenizer, tokens: int, salt: int) -> str:
    """A prompt of exactly `tokens` tokens (BOS included), different per salt."""
    words = [WORDS[(salt + i * 7) % len(WORDS)] for i in range(tokens)]
    text = " ".join(words)
    ids = tokenizer(text).input_ids[:tokens]
    return tokenizer.decode(ids[1:])


@dataclass
class DecodeResult:
    tokens: int
    wall: float
    busy: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @property
    def busy_fraction(self) -> float:
        return self.busy / self.wall


async def decode_heavy(url: str, tokenizer, streams: int, new_tokens: int) -> DecodeResult:
    before = scrape(url)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams + 8)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(stream(client, url, prompt_of(tokenizer, 12, i), new_tokens) for i in range(streams))
        )
        wall = time.perf_counter() - start
    after = scrape(url)
    busy = after.get("tgi_async_shard_busy_seconds", 0) - before.get("tgi_async_shard_busy_seconds", 0)
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:3]
    return DecodeResult(sum(len(r.token_times) for r in results), wall, busy)


@dataclass
class MixedResult:
    itl_p50: float
    itl_p99: float
    ttft_p50: float
    arrivals: int


async def mixed(
    url: str, tokenizer, streams: int, prompt_tokens: int, interval: float, arrivals: int
) -> MixedResult:
    async with httpx.AsyncClient(
        timeout=600, limits=httpx.Limits(max_connections=streams + arrivals + 8)
    ) as client:
        records = [Stream(sent=0.0) for _ in range(streams)]
        background = [
            asyncio.create_task(stream(client, url, prompt_of(tokenizer, 12, i), 3000, record))
            for i, record in enumerate(records)
        ]
        await asyncio.sleep(1.0)  # all streams decoding before prompts arrive
        window_start = time.perf_counter()
        arriving: list[asyncio.Task[Stream]] = []
        for i in range(arrivals):
            arriving.append(
                asyncio.create_task(stream(client, url, prompt_of(tokenizer, prompt_tokens, 100 + i), 8))
            )
            await asyncio.sleep(interval)
        done = await asyncio.gather(*arriving)
        window_end = time.perf_counter()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    gaps = [gap for record in records for gap in record.gaps(window_start, window_end)]
    ttfts = [r.ttft for r in done if r.token_times]
    return MixedResult(median(gaps), percentile(gaps, 99), median(ttfts), len(ttfts))


async def run(args: argparse.Namespace) -> None:
    model = tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    results: dict[str, dict[str, object]] = {"sync": {}, "async": {}}
    with shard_process(model) as socket_path:
        for policy in ("sync", "async"):
            router_args = ["--scheduler", policy, "--max-concurrent-requests", "1024"]
            router_args += ["--prefill-step-tokens", str(args.prefill_step_tokens)]
            with router_process(model, socket_path, *router_args) as (_, url):
                await decode_heavy(url, tokenizer, 8, 16)  # warm caches and code paths
                if args.scenario in ("decode", "both"):
                    results[policy]["decode"] = await decode_heavy(
                        url, tokenizer, args.streams, args.new_tokens
                    )
                if args.scenario in ("mixed", "both"):
                    results[policy]["mixed"] = await mixed(
                        url,
                        tokenizer,
                        args.mixed_streams,
                        args.prompt_tokens,
                        args.interval_ms / 1000,
                        args.arrivals,
                    )
    report(results, args)


def report(results: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    sync, async_ = results["sync"], results["async"]
    if "decode" in sync:
        s, a = sync["decode"], async_["decode"]
        print(f"\n### decode-heavy: {args.streams} streams x {args.new_tokens} new tokens\n")
        print("| scheduler | tokens | wall s | tokens/s | shard busy fraction |")
        print("|---|---|---|---|---|")
        for name, r in (("sync", s), ("async", a)):
            print(f"| {name} | {r.tokens} | {r.wall:.2f} | {r.tokens_per_s:.0f} | {r.busy_fraction:.3f} |")
        print(
            f"\ntokens/s async/sync = **{a.tokens_per_s / s.tokens_per_s:.2f}** (target >= 1.30); "
            f"async busy fraction = **{a.busy_fraction:.3f}** (target >= 0.95)"
        )
    if "mixed" in sync:
        s, a = sync["mixed"], async_["mixed"]
        print(
            f"\n### mixed: {args.mixed_streams} streams decoding, {args.arrivals} prompts of "
            f"{args.prompt_tokens} tokens every {args.interval_ms} ms\n"
        )
        print("| scheduler | ITL p50 ms | ITL p99 ms | TTFT p50 ms |")
        print("|---|---|---|---|")
        for name, r in (("sync", s), ("async", a)):
            print(f"| {name} | {r.itl_p50 * 1e3:.1f} | {r.itl_p99 * 1e3:.1f} | {r.ttft_p50 * 1e3:.1f} |")
        print(
            f"\nITL p99 async/sync = **{a.itl_p99 / s.itl_p99:.2f}** (target <= 0.5); "
            f"TTFT p50 async/sync = **{a.ttft_p50 / s.ttft_p50:.2f}** (target <= 1.0)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("decode", "mixed", "both"), default="both")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--mixed-streams", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--interval-ms", type=int, default=500)
    parser.add_argument("--arrivals", type=int, default=10)
    parser.add_argument("--prefill-step-tokens", type=int, default=512)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
