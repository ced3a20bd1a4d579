"""Async vs sync scheduler, side by side on ONE shard process, through the HTTP API.

    python -m benchmarks.schedulers [--scenario decode|mixed|both] [--streams 64] [--new-tokens 256]
    python -m benchmarks.schedulers --simulate llama-3.1-8b-h100 --streams 256   # SIMULATED GPU profile

For each policy a router starts against the same shard (the bundled one on the tiny CPU model, or the strict
shard with a GPU cost profile: SIMULATED), one at a time (two routers must not share a shard's batches), runs
the scenario with real HTTP streaming clients, and stops. Each round runs the policies in a random order.
Ratios are async/sync.
  decode: N concurrent streams of M new tokens -> tokens/s, and shard busy fraction = shard handler seconds
          (tgi_async_shard_busy_seconds) / wall seconds.
  mixed:  streams decoding (each inside one 1024-token piece: TGI's router splits longer ones) while prompts
          of P tokens arrive every I ms -> inter-token latency p50 / p99 / p99.9 / max of the decoding streams
          while prompts arrive, and how many gaps exceed twice the median; TTFT p50 of the arriving prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from transformers import AutoTokenizer

from benchmarks.harness import (
    Stream,
    cpu_seconds,
    median,
    percentile,
    pin_this_process,
    router_process,
    scrape,
    shard_process,
    stream,
    tiny_model,
)
from benchmarks.sse_client import SSEClient

R = TypeVar("R")
BACKGROUND_TOKENS = 1000  # inside one of the 1024-token pieces TGI's router splits generations into
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
    busy: float  # seconds the shard spent in step handlers
    shard_cpu: float  # CPU seconds of the whole shard process (handlers, gRPC, protobuf)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @property
    def busy_fraction(self) -> float:
        return self.busy / self.wall


async def decode_heavy(url: str, shard_pid: int, tokenizer, streams: int, new_tokens: int) -> DecodeResult:
    before, cpu_before = scrape(url), cpu_seconds(shard_pid)
    async with SSEClient(url) as client:
        await client.open(streams)
        prompts = [prompt_of(tokenizer, 12, i) for i in range(streams)]
        start = time.perf_counter()  # connections open and prompts built: the clock times requests only
        results = await asyncio.gather(*(stream(client, prompt, new_tokens) for prompt in prompts))
        wall = time.perf_counter() - start
    after = scrape(url)
    busy = after.get("tgi_async_shard_busy_seconds", 0) - before.get("tgi_async_shard_busy_seconds", 0)
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:3]
    return DecodeResult(
        sum(len(r.token_times) for r in results), wall, busy, cpu_seconds(shard_pid) - cpu_before
    )


@dataclass
class MixedResult:
    itl_p50: float
    itl_p99: float
    itl_p999: float
    itl_max: float
    stalls: int  # gaps over twice the median
    gaps: int
    ttft_p50: float
    arrivals: int


async def mixed(
    url: str, tokenizer, streams: int, prompt_tokens: int, interval: float, arrivals: int
) -> MixedResult:
    async with SSEClient(url) as client:
        await client.open(streams)  # the arriving prompts connect when sent, as new clients do
        records = [Stream(sent=0.0) for _ in range(streams)]
        background = [
            asyncio.create_task(stream(client, prompt_of(tokenizer, 12, i), BACKGROUND_TOKENS, record))
            for i, record in enumerate(records)
        ]
        prompts = [prompt_of(tokenizer, prompt_tokens, 100 + i) for i in range(arrivals)]  # not in the window
        await asyncio.sleep(1.0)  # all streams decoding before prompts arrive
        window_start = time.perf_counter()
        arriving: list[asyncio.Task[Stream]] = []
        for prompt in prompts:
            arriving.append(asyncio.create_task(stream(client, prompt, 8)))
            await asyncio.sleep(interval)
        done = await asyncio.gather(*arriving)
        window_end = time.perf_counter()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    finished_early = [r for r in records if len(r.token_times) >= BACKGROUND_TOKENS]
    assert not finished_early, (
        "a background stream ended inside the window: lower --arrivals or --interval-ms"
    )
    gaps = [gap for record in records for gap in record.gaps(window_start, window_end)]
    ttfts = [r.ttft for r in done if r.token_times]
    p50 = median(gaps)
    return MixedResult(
        p50,
        percentile(gaps, 99),
        percentile(gaps, 99.9),
        max(gaps, default=float("nan")),
        sum(1 for g in gaps if g > 2 * p50),
        len(gaps),
        median(ttfts),
        len(ttfts),
    )


async def run(args: argparse.Namespace) -> None:
    pin_this_process()
    model = tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    decode: dict[str, list[DecodeResult]] = {"sync": [], "async": []}
    mixed_: dict[str, list[MixedResult]] = {"sync": [], "async": []}
    shard_args = ["--simulate", args.simulate] if args.simulate else []
    order = random.Random(args.seed)
    with shard_process(model, *shard_args) as (shard, socket_path):
        for _ in range(args.rounds):
            policies = ["sync", "async"]
            order.shuffle(policies)  # drift on the machine hits both alike, in no fixed order
            for policy in policies:
                router_args = ["--scheduler", policy, "--max-concurrent-requests", "1024"]
                router_args += ["--prefill-step-tokens", str(args.prefill_step_tokens)]
                router_args += ["--max-batch-prefill-tokens", str(args.max_batch_prefill_tokens)]
                with router_process(model, socket_path, *router_args) as (_, url):
                    await decode_heavy(url, shard.popen.pid, tokenizer, 8, 16)  # warm caches and code paths
                    if args.scenario in ("decode", "both"):
                        decode[policy].append(
                            await decode_heavy(url, shard.popen.pid, tokenizer, args.streams, args.new_tokens)
                        )
                    if args.scenario in ("mixed", "both"):
                        mixed_[policy].append(
                            await mixed(
                                url,
                                tokenizer,
                                args.mixed_streams,
                                args.prompt_tokens,
                                args.interval_ms / 1000,
                                args.arrivals,
                            )
                        )
    report(decode, mixed_, args)


def print_rounds(
    columns: tuple[str, ...], results: dict[str, list[R]], cells: Callable[[R], tuple[str, ...]]
):
    """A markdown table with a row per round and policy (sync, then async)."""
    print("| round | scheduler | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 2))
    for i, pair in enumerate(zip(results["sync"], results["async"], strict=True)):
        for name, result in zip(("sync", "async"), pair, strict=True):
            print(f"| {i + 1} | {name} | " + " | ".join(cells(result)) + " |")


def report(
    decode: dict[str, list[DecodeResult]], mixed_: dict[str, list[MixedResult]], args: argparse.Namespace
) -> None:
    """Every round's numbers, then the ratios of the per-policy medians."""
    shard = f"strict shard, profile {args.simulate}: SIMULATED" if args.simulate else "bundled shard, CPU"
    if decode["sync"]:
        print(
            f"\n### decode-heavy ({shard}): {args.streams} streams x {args.new_tokens} new tokens, "
            f"{args.rounds} rounds\n"
        )
        print_rounds(
            ("tokens", "wall s", "tokens/s", "shard busy fraction", "shard CPU / wall"),
            decode,
            lambda r: (
                f"{r.tokens}",
                f"{r.wall:.2f}",
                f"{r.tokens_per_s:.0f}",
                f"{r.busy_fraction:.3f}",
                f"{r.shard_cpu / r.wall:.2f}",
            ),
        )
        s_tps = median([r.tokens_per_s for r in decode["sync"]])
        a_tps = median([r.tokens_per_s for r in decode["async"]])
        a_busy = median([r.busy_fraction for r in decode["async"]])
        s_busy = median([r.busy_fraction for r in decode["sync"]])
        rounds = zip(decode["sync"], decode["async"], strict=True)
        paired = median([a.tokens_per_s / s.tokens_per_s for s, a in rounds])
        print(
            f"\nmedians: tokens/s sync {s_tps:.0f}, async {a_tps:.0f}; "
            f"busy sync {s_busy:.3f}, async {a_busy:.3f}"
            f"\ntokens/s async/sync = **{a_tps / s_tps:.2f}** (target >= 1.30; median of the per-round "
            f"ratios, each round's two runs back to back: {paired:.2f}); "
            f"async busy fraction = **{a_busy:.3f}** (target >= 0.95)"
        )
    if mixed_["sync"]:
        print(
            f"\n### mixed ({shard}): {args.mixed_streams} streams decoding, {args.arrivals} prompts of "
            f"{args.prompt_tokens} tokens every {args.interval_ms} ms, {args.rounds} rounds\n"
        )
        print_rounds(
            ("ITL p50 ms", "p99 ms", "p99.9 ms", "max ms", "gaps > 2x p50", "TTFT p50 ms"),
            mixed_,
            lambda r: (
                f"{r.itl_p50 * 1e3:.1f}",
                f"{r.itl_p99 * 1e3:.1f}",
                f"{r.itl_p999 * 1e3:.1f}",
                f"{r.itl_max * 1e3:.1f}",
                f"{r.stalls} of {r.gaps}",
                f"{r.ttft_p50 * 1e3:.1f}",
            ),
        )

        def ratio(field: str) -> str:
            s_, a_ = (median([getattr(r, field) for r in mixed_[p]]) for p in ("sync", "async"))
            return f"{a_ / s_:.2f} ({s_ * 1e3:.1f} -> {a_ * 1e3:.1f} ms)"

        print(
            f"\nasync/sync of the medians over rounds: ITL p99 **{ratio('itl_p99')}**, "
            f"p99.9 **{ratio('itl_p999')}**, max {ratio('itl_max')}; TTFT p50 **{ratio('ttft_p50')}**"
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
    parser.add_argument("--prefill-step-tokens", type=int, default=768)
    parser.add_argument("--max-batch-prefill-tokens", type=int, default=4096)
    parser.add_argument("--simulate", default=None, help="the strict shard with this profile (SIMULATED)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="of the policies' order in each round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
