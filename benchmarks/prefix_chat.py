"""Prefix caching on vs off: multi-turn chats sharing one system prompt, side by side in one invocation.

    python -m benchmarks.prefix_chat [--users 32] [--turns 8] [--system-tokens 1500] [--rounds 2]
    python -m benchmarks.prefix_chat --simulate llama-3.1-8b-h100     # the strict shard's profile: SIMULATED

Each user sends `turns` requests one after the other, each the system prompt, the conversation so far (its
questions and the answers it got) and a new question; the users run concurrently. For each variant a shard
starts with prefix caching on (`--prefix-caching`) or off, then a router against it (async scheduler), in a
random order per round. Reported: TTFT p50 / p99 of every request, and whether both variants produced the same
answers (greedy decoding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from transformers import AutoTokenizer

from benchmarks.harness import median, percentile, pin_this_process, router_process, shard_process, tiny_model
from benchmarks.schedulers import prompt_of
from benchmarks.sse_client import SSEClient


async def ask(client: SSEClient, prompt: str, new_tokens: int) -> tuple[float, str]:
    """(TTFT, the answer) of one streamed request."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens}}
    first: list[float] = []
    last: list[bytes] = []

    def on_event(arrived: float, event: bytes) -> None:
        if event.startswith(b"data:"):
            if not first:
                first.append(arrived)
            last[:] = [event]

    sent = time.perf_counter()
    status = await client.post("/generate_stream", body, on_event)
    answer = json.loads(last[0][5:]) if last else {}
    if status != 200 or "error" in answer:
        raise RuntimeError(f"HTTP {status}: {answer}")
    return first[0] - sent, answer["generated_text"]


async def chats(url: str, system: str, users: int, turns: int, new_tokens: int):
    """TTFT of every request, and every answer by (user, turn)."""
    ttfts: list[float] = []
    answers: dict[tuple[int, int], str] = {}

    async def user(client: SSEClient, u: int) -> None:
        history = system
        for t in range(turns):
            history += f"\nuser {u} asks question {t}: what does the router do with turn {t}?\nassistant:"
            ttft, answer = await ask(client, history, new_tokens)
            ttfts.append(ttft)
            answers[(u, t)] = answer
            history += answer

    async with SSEClient(url) as client:
        await client.open(users)
        await asyncio.gather(*(user(client, u) for u in range(users)))
    return ttfts, answers


async def run(args: argparse.Namespace) -> None:
    pin_this_process()
    model = tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    system = prompt_of(tokenizer, args.system_tokens, salt=7)
    other = prompt_of(tokenizer, args.system_tokens, salt=8)  # warms code paths, not the measured prefix
    router_args = [
        "--max-concurrent-requests", "1024", "--max-input-tokens", "3500", "--max-total-tokens", "4000",
        "--max-batch-prefill-tokens", "4096",
    ]  # fmt: skip
    results: dict[str, list[tuple[list[float], dict]]] = {"on": [], "off": []}
    order = random.Random(args.seed)
    for _ in range(args.rounds):
        variants = ["on", "off"]
        order.shuffle(variants)
        for variant in variants:
            shard_args = ["--prefix-caching" if variant == "on" else "--no-prefix-caching"]
            if args.simulate:
                shard_args += ["--simulate", args.simulate]
            with shard_process(model, *shard_args) as (_, socket_path):
                with router_process(model, socket_path, *router_args) as (_, url):
                    await chats(url, other, 2, 1, 4)
                    results[variant].append(await chats(url, system, args.users, args.turns, args.new_tokens))
    report(results, args)


def report(results: dict[str, list[tuple[list[float], dict]]], args: argparse.Namespace) -> None:
    shard = f"strict shard, profile {args.simulate}: SIMULATED" if args.simulate else "bundled shard, CPU"
    print(
        f"\n### prefix caching on vs off ({shard}): {args.users} users x {args.turns} turns, a "
        f"{args.system_tokens}-token system prompt, {args.new_tokens} new tokens, {args.rounds} rounds\n"
    )
    print("| round | prefix caching | requests | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---|---|---|---|")
    for i in range(args.rounds):
        for variant in ("on", "off"):
            ttfts, _ = results[variant][i]
            p50, p99 = median(ttfts) * 1e3, percentile(ttfts, 99) * 1e3
            print(f"| {i + 1} | {variant} | {len(ttfts)} | {p50:.1f} | {p99:.1f} |")
    on = median([median(t) for t, _ in results["on"]])
    off = median([median(t) for t, _ in results["off"]])
    same = sum(
        results["on"][i][1][key] == results["off"][i][1][key]
        for i in range(args.rounds)
        for key in results["on"][i][1]
    )
    total = sum(len(a) for _, a in results["on"])
    print(
        f"\nTTFT p50 on/off = **{on / off:.2f}** ({off * 1e3:.1f} -> {on * 1e3:.1f} ms; target <= 0.3); "
        f"answers equal: {same} of {total}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--simulate", default=None, help="the strict shard with this profile (SIMULATED)")
    parser.add_argument("--seed", type=int, default=0, help="of the variants' order in each round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
