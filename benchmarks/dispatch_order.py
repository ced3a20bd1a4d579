"""How often a shard that runs calls one at a time starts a later call first, by how much later it was sent.

For each gap: the shard is idle, a Decode of a live batch goes out, then, `gap` later, a second call (Health,
which TGI's shard serves in the same one-at-a-time loop). If the second call answers before the Decode, the
shard started it first: the two reached an idle shard close enough to race. This is the window the async
scheduler's pipeline must stay out of on shards that do not order calls (scheduler/decode_plan.py, rule 2).

    python -m benchmarks.dispatch_order --shard tgi --rounds 300      # TGI's own CPU shard (TGI_SHARD_BIN)
    python -m benchmarks.dispatch_order --shard strict                 # the strict shard (no delay)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from benchmarks.harness import tiny_model
from tgi_async.client.shard_client import ShardClient
from tgi_async.client.types import CachedBatch, NewBatch, NewRequest
from tgi_async.launcher.processes import short_tmp_dir, spawn, start_bundled_shard, wait_for_path
from tgi_async.scheduler.request import GenerateRequest, SamplingParameters, StoppingParameters

GAPS_US = (0, 25, 50, 100, 200, 500, 1000, 2000)


def start(kind: str, model: Path):
    if kind == "strict":
        return start_bundled_shard(model, "--simulate", "test", "--time-scale", "0")
    binary = os.environ.get("TGI_SHARD_BIN")
    if not binary:
        raise SystemExit("--shard tgi needs TGI_SHARD_BIN (make tgi-shard builds it under .cache/tgi-shard)")
    adapted = Path(binary).parent.parent / "model"
    directory = short_tmp_dir()
    uds = os.path.join(directory, "tgi")
    child = spawn(
        "tgi-shard", [binary, "serve", str(adapted), "--uds-path", uds], log_path=Path(directory) / "log"
    )
    wait_for_path(child, f"{uds}-0", timeout=120)
    return child, f"{uds}-0"


def live_batch(batch_id: int) -> NewBatch:
    request = GenerateRequest(
        inputs="the batch that keeps decoding",
        input_length=6,
        sampling=SamplingParameters(),
        stopping=StoppingParameters(max_new_tokens=100_000, ignore_eos_token=True),
    )
    slots = tuple(range(16, 16 + 64))
    return NewBatch(batch_id, (NewRequest(0, request, blocks=tuple(range(1, 5)), slots=slots),), 0, 4)


async def measure(socket_path: str, rounds: int) -> dict[int, int]:
    client = ShardClient(socket_path)
    await client.clear_cache(None)
    await client.warmup(None, 64, None, None)
    result = await client.prefill(live_batch(1))
    batch: CachedBatch = result.batch
    overtaken = dict.fromkeys(GAPS_US, 0)
    for _ in range(rounds):
        for gap in GAPS_US:
            order: list[str] = []
            decode = asyncio.ensure_future(client.decode([batch]))
            decode.add_done_callback(lambda _, order=order: order.append("decode"))
            deadline = time.perf_counter() + gap / 1e6
            while time.perf_counter() < deadline:  # a busy wait: sleeps are coarser than the gaps
                pass
            health = asyncio.ensure_future(client.health())
            health.add_done_callback(lambda _, order=order: order.append("health"))
            await asyncio.gather(decode, health)
            overtaken[gap] += order[0] == "health"
            batch = decode.result().batch
    await client.close()
    return overtaken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard", choices=("tgi", "strict"), default="tgi")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    child, socket_path = start(args.shard, tiny_model())
    try:
        overtaken = asyncio.run(measure(socket_path, args.rounds))
    finally:
        child.stop()
    print(f"shard: {args.shard}; {args.rounds} rounds per gap")
    print("| gap between the calls (µs) | second call started first |")
    print("|---|---|")
    for gap, count in overtaken.items():
        print(f"| {gap} | {count}/{args.rounds} ({100 * count / args.rounds:.1f} %) |")


if __name__ == "__main__":
    main()
