"""Bundled shard tokens/s with and without a JSON-schema grammar, batch 1 and 64, in the same run.

    python -m benchmarks.grammar_throughput [--model-id DIR] [--steps 64] [--rounds 3] [--num-threads N]

A real `tgi-async shard serve` on a Unix socket. Each measurement prefills `batch` identical requests
(ignore_eos, so every request makes `steps` tokens) and decodes them to the end; tokens/s is
batch * steps / the client's wall time of the decode steps. Plain and grammar runs alternate over `rounds`
rounds; medians. Then what a new grammar costs a Prefill (compiled while the batch waits) against a
cached one. The grammar keeps every row inside a JSON array of objects that never has to end, so each
step computes a real mask for every row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc.aio

from benchmarks.shard_step import GREEDY, PROMPT, Slots, _warmup_batch, default_model, make_request
from tgi_async.launcher.processes import spawn, tgi_async_command, wait_for_path
from tgi_async.proto import ShardStub, pb

SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "user", "guest"]},
        },
        "required": ["name", "age", "role"],
        "additionalProperties": False,
    },
}


def parameters(with_grammar: bool) -> pb.NextTokenChooserParameters:
    message = pb.NextTokenChooserParameters()
    message.CopyFrom(GREEDY)
    if with_grammar:
        message.grammar, message.grammar_type = json.dumps(SCHEMA), pb.GRAMMAR_TYPE_JSON
    return message


async def run_once(
    stub, batch_size: int, steps: int, with_grammar: bool, batch_id: int
) -> tuple[float, float]:
    """(tokens/s over the decode steps, median server ms per decode step)."""
    slots = Slots()
    requests = []
    for i in range(batch_size):
        message = make_request(i, PROMPT, slots, steps + 1)
        message.parameters.CopyFrom(parameters(with_grammar))
        requests.append(message)
    response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=batch_id, requests=requests)))
    cached, server = response.batch, []
    started = time.perf_counter()
    for _ in range(steps):
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        server.append(response.total_ns / 1e6)
        cached = response.batch
    wall = time.perf_counter() - started
    await stub.ClearCache(pb.ClearCacheRequest(id=batch_id))
    return batch_size * steps / wall, statistics.median(server)


async def prefill_ms(stub, schema: dict, batch_id: int) -> float:
    """Server ms of a one-request Prefill with `schema` as its grammar."""
    message = make_request(0, PROMPT, Slots(), 2)
    message.parameters.CopyFrom(parameters(True))
    message.parameters.grammar = json.dumps(schema)
    response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=batch_id, requests=[message])))
    await stub.ClearCache(pb.ClearCacheRequest(id=batch_id))
    return response.total_ns / 1e6


async def compile_costs(stub, rounds: int) -> tuple[float, float, float]:
    """Median server ms of a Prefill without grammar, with a schema never seen, with a cached schema."""
    plain, new, cached = [], [], []
    for round_ in range(rounds):
        message = make_request(0, PROMPT, Slots(), 2)
        response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=2, requests=[message])))
        await stub.ClearCache(pb.ClearCacheRequest(id=2))
        plain.append(response.total_ns / 1e6)
        fresh = {**SCHEMA, "title": f"new schema {round_} {time.time()}"}  # a new text: not in the cache
        new.append(await prefill_ms(stub, fresh, 2))
        cached.append(await prefill_ms(stub, fresh, 2))
    return statistics.median(plain), statistics.median(new), statistics.median(cached)


async def measure(socket_path: str, steps: int, rounds: int):
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        stub = ShardStub(channel)
        await stub.Warmup(pb.WarmupRequest(batch=_warmup_batch(), max_prefill_tokens=4096))
        costs = await compile_costs(stub, rounds)
        for batch_size in (1, 64):
            await run_once(stub, batch_size, 4, True, 1)  # compiles the grammar (cached from then on)
            for _ in range(rounds):
                for with_grammar in (False, True):
                    run = await run_once(stub, batch_size, steps, with_grammar, 1)
                    results.setdefault((batch_size, with_grammar), []).append(run)
    rows = []
    for (batch_size, with_grammar), runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        step_ms = statistics.median(r[1] for r in runs)
        rows.append((batch_size, "JSON schema" if with_grammar else "none", rate, step_ms))
    return rows, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-id", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args()
    threads = ["--num-threads", str(args.num_threads)] if args.num_threads else []
    model_dir = args.model_id or default_model()
    directory = tempfile.mkdtemp(prefix="tgia-bench-", dir="/tmp")
    uds = os.path.join(directory, "shard")
    child = spawn(
        "shard",
        tgi_async_command("shard", "serve", str(model_dir), "--uds-path", uds, *threads),
        log_path=Path(directory) / "shard.log",
    )
    try:
        wait_for_path(child, f"{uds}-0")
        rows, (plain_ms, new_ms, cached_ms) = asyncio.run(measure(f"{uds}-0", args.steps, args.rounds))
    finally:
        child.stop()
    print(f"Bundled shard, {model_dir.name}; {args.steps} decode steps per run, medians of {args.rounds}\n")
    print("| batch | grammar | tokens/s | server ms / step |")
    print("|---|---|---|---|")
    plain = {batch: rate for batch, kind, rate, _ in rows if kind == "none"}
    for batch_size, kind, rate, step_ms in rows:
        relative = "" if kind == "none" else f" ({rate / plain[batch_size]:.0%} of plain)"
        print(f"| {batch_size} | {kind} | {rate:,.0f}{relative} | {step_ms:.2f} |")
    print("\n| one-request Prefill | server ms |")
    print("|---|---|")
    print(f"| no grammar | {plain_ms:.2f} |")
    print(f"| JSON schema never seen (compiled) | {new_ms:.2f} |")
    print(f"| the same schema again (cached) | {cached_ms:.2f} |")


if __name__ == "__main__":
    main()
