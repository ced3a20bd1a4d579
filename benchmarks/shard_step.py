"""Bundled shard step times: decode at batch 1/8/32, prefill throughput, and plain `model.generate` per token.

    python -m benchmarks.shard_step [--model-id DIR] [--steps 100] [--num-threads N]

Starts a real `tgi-async shard serve` on a Unix socket, warms it up as TGI's router does, and drives it with a
grpc.aio client. "server" is the shard's own total_ns (the RPC's work), "client" the round trip seen by the
caller. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc.aio

from tgi_async.launcher.processes import spawn, tgi_async_command, wait_for_path
from tgi_async.proto import ShardStub, pb

GREEDY = pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0)
BLOCK_SIZE = 16
PROMPT = "The router sends prompts to the shard, which computes them in one forward per step."


def default_model() -> Path:
    from tgi_async.tiny_model import make_tiny_model

    directory = Path(os.environ.get("TGI_ASYNC_CACHE", ".cache")) / "tiny-model-seed0"
    if not (directory / "tgi_async_tiny.json").exists():
        make_tiny_model(directory, seed=0)
    return directory


class Slots:
    """Router-style block allocation (block 0 reserved)."""

    def __init__(self) -> None:
        self.next_block = 1

    def take(self, tokens: int) -> tuple[list[int], list[int]]:
        count = -(-tokens // BLOCK_SIZE)
        blocks = list(range(self.next_block, self.next_block + count))
        self.next_block += count
        return blocks, [b * BLOCK_SIZE + o for b in blocks for o in range(BLOCK_SIZE)][:tokens]


def make_request(request_id: int, text: str, slots: Slots, max_new_tokens: int) -> pb.Request:
    # NOTE: generous slots: the prompt's token count is not known client-side (one char >= one token bound).
    blocks, slot_list = slots.take(len(text) + 2 + max_new_tokens)
    return pb.Request(
        id=request_id,
        inputs=text,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=text)]),
        parameters=GREEDY,
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=max_new_tokens, ignore_eos_token=True
        ),
        add_special_tokens=True,
        blocks=blocks,
        slots=slot_list,
    )


@dataclass
class ShardRun:
    tokens: int
    wall: float
    forward: float  # seconds of forwards (compute thread)
    busy: float  # seconds in step handlers
    steps: list[float]  # client round trip of each Decode, seconds
    token_ids: dict[int, list[int]]  # request id: its generated ids

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall


async def shard_run(
    stub,
    batch_size: int,
    steps: int,
    batch_id: int,
    prompt: str = PROMPT,
    on_decode: Callable[[int], None] | None = None,
) -> ShardRun:
    """B requests of `steps` new tokens from Prefill to the last Decode, filtered as TGI's router does.
    `on_decode(n)` runs before the n-th Decode (a profiler's window)."""
    slots = Slots()
    requests = [make_request(i, prompt, slots, steps) for i in range(batch_size)]
    token_ids: dict[int, list[int]] = {i: [] for i in range(batch_size)}
    started = time.perf_counter()
    response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=batch_id, requests=requests)))
    tokens, forward, busy, latencies = len(response.generations), response.forward_ns, response.total_ns, []
    for g in response.generations:
        token_ids[g.request_id].extend(g.tokens.ids)
    cached = response.batch if response.HasField("batch") else None
    while cached is not None:
        if on_decode is not None:
            on_decode(len(latencies))
        sent = time.perf_counter()
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        latencies.append(time.perf_counter() - sent)
        tokens += len(response.generations)
        for g in response.generations:
            token_ids[g.request_id].extend(g.tokens.ids)
        forward, busy = forward + response.forward_ns, busy + response.total_ns
        cached = response.batch if response.HasField("batch") else None
        finished = {g.request_id for g in response.generations if g.HasField("generated_text")}
        if cached is not None and finished:
            keep = [i for i in cached.request_ids if i not in finished]
            filtered = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=cached.id, request_ids=keep))
            cached = filtered.batch
    wall = time.perf_counter() - started
    return ShardRun(tokens, wall, forward / 1e9, busy / 1e9, latencies, token_ids)


async def decode_times(stub, batch_size: int, steps: int, batch_id: int) -> tuple[float, float]:
    """Median (server ms, client ms) of a decode step at `batch_size`, after a few unmeasured steps."""
    slots = Slots()
    requests = [make_request(i, PROMPT, slots, steps + 16) for i in range(batch_size)]
    response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=batch_id, requests=requests)))
    cached = response.batch
    server, client = [], []
    for step in range(steps + 5):
        started = time.perf_counter_ns()
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        wall = time.perf_counter_ns() - started
        cached = response.batch
        if step >= 5:
            server.append(response.total_ns / 1e6)
            client.append(wall / 1e6)
    await stub.ClearCache(pb.ClearCacheRequest(id=batch_id))
    return statistics.median(server), statistics.median(client)


async def prefill_rate(stub, text: str, batch_size: int, repeats: int) -> tuple[float, float]:
    """Median (server s, client s) of one prefill forward of `batch_size` copies of `text`."""
    server, client = [], []
    for repeat in range(repeats + 1):
        slots = Slots()
        requests = [make_request(i, text, slots, 1) for i in range(batch_size)]
        started = time.perf_counter_ns()
        response = await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=900, requests=requests)))
        wall = time.perf_counter_ns() - started
        if repeat:
            server.append(response.total_ns / 1e9)
            client.append(wall / 1e9)
    return statistics.median(server), statistics.median(client)


def prompt_tokens(model_dir: Path, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"])


def generate_per_token_ms(model_dir: Path, new_tokens: int = 128) -> float:
    """Plain transformers `model.generate` (greedy, its own KV cache) at batch 1: ms per generated token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    def run(n: int) -> float:
        config = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=0)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(prompt, generation_config=config)
        return time.perf_counter() - started

    run(8)
    short = statistics.median(run(1) for _ in range(3))
    long = statistics.median(run(new_tokens + 1) for _ in range(3))
    return (long - short) / new_tokens * 1e3


async def measure(socket_path: str, steps: int, model_dir: Path) -> list[tuple[str, str, str]]:
    rows = []
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        stub = ShardStub(channel)
        await stub.Warmup(pb.WarmupRequest(batch=_warmup_batch(), max_prefill_tokens=4096))
        for batch_size in (1, 8, 32):
            server, client = await decode_times(stub, batch_size, steps, batch_id=batch_size)
            rows.append((f"decode step, batch {batch_size}", f"{server:.2f} ms", f"{client:.2f} ms"))
        for repeats, batch_size in ((4, 1), (32, 1), (4, 16)):
            text = " ".join([PROMPT] * repeats)
            tokens = batch_size * prompt_tokens(model_dir, text)
            server, client = await prefill_rate(stub, text, batch_size, repeats=5)
            label = f"prefill {batch_size} x {tokens // batch_size} tokens"
            rows.append((label, f"{tokens / server:,.0f} tok/s", f"{tokens / client:,.0f} tok/s"))
    rows.append(("`model.generate`, batch 1, per token", f"{generate_per_token_ms(model_dir):.2f} ms", "-"))
    return rows


def _warmup_batch() -> pb.Batch:
    request = pb.Request(
        id=0,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="_test " * 512)]),
        truncate=512,
        add_special_tokens=True,
        parameters=GREEDY,
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1, ignore_eos_token=True),
    )
    return pb.Batch(id=0, requests=[request], size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-id", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (shard and generate)")
    args = parser.parse_args()
    threads = ["--num-threads", str(args.num_threads)] if args.num_threads else []
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
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
        rows = asyncio.run(measure(f"{uds}-0", args.steps, model_dir))
    finally:
        child.stop()
    import torch

    decode_prompt = prompt_tokens(model_dir, PROMPT)
    shard_threads = args.num_threads or "default"
    print(f"Bundled shard, {model_dir.name}; torch threads: shard {shard_threads}, generate ", end="")
    print(f"{torch.get_num_threads()}; decodes after a {decode_prompt}-token prompt; medians\n")
    print("| measure | server | client |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    main()
