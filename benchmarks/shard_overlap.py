"""The bundled shard's step overlap on vs off in one run: the shard alone at batch 1/8/32/64, the full stack.

    python -m benchmarks.shard_overlap [--rounds 3] [--steps 256] [--streams 64] [--new-tokens 256]

Two shard processes on the tiny CPU model, one `--overlap`, one `--no-overlap`, both pinned to CPU 0 (the
client and routers to CPU 1, as in benchmarks/schedulers.py). Each round runs both, in a random order.
  shard: a grpc.aio client drives Prefill + Decode (+ FilterBatch) as TGI's router does, B requests of
         `--steps` new tokens -> tokens/s; compute fraction = the forwards' time on the compute thread
         (`forward_ns` summed) / wall; busy fraction = the handlers' time (`total_ns`, what the router
         counts as shard busy) / wall; the client's step round trip p50 / p99 / p99.9 / max.
  stack: router (async, sync) + shard (overlap, no overlap) over HTTP, decode-heavy (benchmarks/schedulers.py)
         -> tokens/s, router-measured compute fraction (tgi_batch_forward_duration) and busy fraction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from dataclasses import dataclass

import grpc.aio
from transformers import AutoTokenizer

from benchmarks.harness import median, percentile, pin_this_process, router_process, scrape, shard_process
from benchmarks.harness import tiny_model as cached_tiny_model
from benchmarks.schedulers import decode_heavy
from benchmarks.shard_step import ShardRun, _warmup_batch, shard_run
from tgi_async.proto import ShardStub, pb

MODES = ("overlap", "no-overlap")
STACKS = (("async", "overlap"), ("sync", "no-overlap"), ("async", "no-overlap"), ("sync", "overlap"))


async def shard_rounds(sockets: dict[str, str], args) -> dict[tuple[str, int], list[ShardRun]]:
    results: dict[tuple[str, int], list[ShardRun]] = {}
    order = random.Random(args.seed)
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for mode, path in sockets.items():
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"unix://{path}"))
            stubs[mode] = ShardStub(channel)
            await stubs[mode].Warmup(pb.WarmupRequest(batch=_warmup_batch(), max_prefill_tokens=4096))
            await shard_run(stubs[mode], 8, 16, 1)  # warm code paths
        for _ in range(args.rounds):
            for batch_size in args.batch_sizes:
                modes = list(MODES)
                order.shuffle(modes)
                for mode in modes:
                    run = await shard_run(stubs[mode], batch_size, args.steps, 2)
                    results.setdefault((mode, batch_size), []).append(run)
    return results


@dataclass
class StackRun:
    tokens_per_s: float
    forward_fraction: float
    busy_fraction: float


async def stack_rounds(sockets: dict[str, str], pids: dict[str, int], model, args) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model)
    results: dict[tuple[str, str], list[StackRun]] = {}
    order = random.Random(args.seed + 1)
    for _ in range(args.rounds):
        stacks = list(STACKS)
        order.shuffle(stacks)
        for scheduler, mode in stacks:
            router_args = ["--scheduler", scheduler, "--max-concurrent-requests", "1024"]
            with router_process(model, sockets[mode], *router_args) as (_, url):
                await decode_heavy(url, pids[mode], tokenizer, 8, 16)
                before = scrape(url)
                result = await decode_heavy(url, pids[mode], tokenizer, args.streams, args.new_tokens)
                after = scrape(url)
            forward = sum(
                after[key] - before.get(key, 0.0)
                for key in after
                if key.startswith("tgi_batch_forward_duration_sum")
            )
            run = StackRun(result.tokens_per_s, forward / result.wall, result.busy_fraction)
            results.setdefault((scheduler, mode), []).append(run)
    return results


def report_shard(results: dict[tuple[str, int], list[ShardRun]], args) -> None:
    print(
        f"\n#### shard alone (gRPC client, TGI's call sequence): {args.steps} new tokens per request, "
        f"{args.rounds} rounds, medians\n"
    )
    columns = "tokens/s | compute fraction | busy fraction | step p50 ms | p99 | p99.9 | max"
    print(f"| batch | overlap | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        for mode in MODES:
            runs = results[(mode, batch_size)]
            steps = [s for run in runs for s in run.steps]
            cells = [
                f"{median([r.tokens_per_s for r in runs]):.0f}",
                f"{median([r.forward / r.wall for r in runs]):.3f}",
                f"{median([r.busy / r.wall for r in runs]):.3f}",
                *(f"{percentile(steps, q) * 1e3:.2f}" for q in (50, 99, 99.9)),
                f"{max(steps) * 1e3:.2f}",
            ]
            print(f"| {batch_size} | {'on' if mode == 'overlap' else 'off'} | " + " | ".join(cells) + " |")
    ratios = []
    for batch_size in args.batch_sizes:
        paired = zip(results[("overlap", batch_size)], results[("no-overlap", batch_size)], strict=True)
        ratio = median([a.tokens_per_s / b.tokens_per_s for a, b in paired])
        ratios.append(f"batch {batch_size} **{ratio:.2f}**")
    print("\ntokens/s on/off (median of per-round ratios): " + ", ".join(ratios))


def report_stack(results: dict[tuple[str, str], list[StackRun]], args) -> None:
    print(
        f"\n#### full stack, decode-heavy: {args.streams} streams x {args.new_tokens} new tokens, "
        f"{args.rounds} rounds, medians\n"
    )
    print("| router | shard overlap | tokens/s | compute fraction | busy fraction | tokens/s per round |")
    print("|---|---|---|---|---|---|")
    for scheduler, mode in STACKS:
        runs = results[(scheduler, mode)]
        print(
            f"| {scheduler} | {'on' if mode == 'overlap' else 'off'} "
            f"| {median([r.tokens_per_s for r in runs]):.0f} "
            f"| {median([r.forward_fraction for r in runs]):.3f} "
            f"| {median([r.busy_fraction for r in runs]):.3f} "
            f"| {', '.join(f'{r.tokens_per_s:.0f}' for r in runs)} |"
        )
    best = results[("async", "overlap")]
    base = results[("sync", "no-overlap")]
    paired = median([a.tokens_per_s / b.tokens_per_s for a, b in zip(best, base, strict=True)])
    print(f"\ntokens/s (async + overlap) / (sync + no overlap) = **{paired:.2f}** (median of round ratios)")
    for scheduler in ("async", "sync"):
        on, off = results[(scheduler, "overlap")], results[(scheduler, "no-overlap")]
        ratio = median([a.tokens_per_s / b.tokens_per_s for a, b in zip(on, off, strict=True)])
        print(f"tokens/s overlap on/off under the {scheduler} router = **{ratio:.2f}**")


async def run(args) -> None:
    pin_this_process()
    model = cached_tiny_model()
    threads = ["--num-threads", str(args.num_threads)] if args.num_threads else []
    with (
        shard_process(model, "--overlap", *threads) as (overlap_shard, overlap_socket),
        shard_process(model, "--no-overlap", *threads) as (plain_shard, plain_socket),
    ):
        sockets = {"overlap": overlap_socket, "no-overlap": plain_socket}
        pids = {"overlap": overlap_shard.popen.pid, "no-overlap": plain_shard.popen.pid}
        if args.scenario in ("shard", "both"):
            report_shard(await shard_rounds(sockets, args), args)
        if args.scenario in ("stack", "both"):
            report_stack(await stack_rounds(sockets, pids, model, args), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("shard", "stack", "both"), default="both")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--steps", type=int, default=256, help="new tokens per request (shard alone)")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="of the modes' order in each round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
