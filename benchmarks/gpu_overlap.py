"""The bundled shard's step overlap on a GPU: a random-weight Llama of an 8B model's shape, on vs off.

    python -m benchmarks.gpu_overlap measure [--shape 8b] [--batch-sizes 32 1 64] [--new-tokens 512]
    python -m benchmarks.gpu_overlap smoke MODEL_DIR      # the device path against the CPU, first

`measure`: one Engine whose weights are random and made on the device (no checkpoint, no download), served by
the shard's real gRPC service (tgi_async/shard/server.py) on a Unix socket from its own thread and event loop,
and driven by a grpc.aio client in TGI's call sequence (benchmarks/shard_step.py's `shard_run`: Prefill,
Decode, FilterBatch). Between runs the engine's StepPipeline is replaced (overlap on / off); each round runs
both in a random order. Per batch size: tokens/s, the GPU's active fraction (the union of its kernels, copies
and memsets over a window of decode steps, from torch.profiler; the run is repeated for it, since the
profiler slows launches), the step handlers' busy fraction, Decode round trips p50 / p99 / p99.9 / max, and
whether greedy ids are identical on and off.

`smoke`: a small checkpoint on the device, overlap on and off, against the CPU without overlap: mixed lengths,
seeded sampling, prompt logprobs, top-n tokens, a Prefill joining a running batch, filters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc.aio
import torch

from benchmarks.shard_step import ShardRun, Slots, _warmup_batch, make_request, shard_run
from benchmarks.stats import median, percentile
from tgi_async.proto import ShardStub, pb
from tgi_async.shard import attention
from tgi_async.shard.engine import Engine, EngineConfig
from tgi_async.shard.server import ShardService, grpc_server
from tgi_async.shard.step_pipeline import StepPipeline

# Llama 3.1 8B's shape (random weights); "small" runs the same code anywhere in seconds
SHAPES = {
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
}
GPU_ACTIVITY = ("kernel", "gpu_memcpy", "gpu_memset")


# -- the model and its server ---------------------------------------------------------------------------


def word_tokenizer(vocab_size: int, directory: Path):
    """A word-level tokenizer of `vocab_size` ids ("w3" ...), saved to `directory` (the engine's model id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=8192,
    )
    fast.save_pretrained(directory)
    return fast


SDPA_CHOICES = {  # which of torch's SDPA backends may run (the engine's own choice when "engine")
    "engine": None,
    "all": ("cudnn", "flash", "mem_efficient", "math"),
    "no-cudnn": ("flash", "mem_efficient", "math"),
    "math": ("math",),
}


def choose_sdpa(choice: str) -> None:
    allowed = SDPA_CHOICES[choice]
    if allowed is None:
        return
    for backend in ("cudnn", "flash", "mem_efficient", "math"):
        getattr(torch.backends.cuda, f"enable_{backend}_sdp")(backend in allowed)


def random_engine(shape: str, device: str, dtype: str, directory: Path, cuda_graphs: bool = False) -> Engine:
    """An Engine over a random-weight Llama of `shape`, built directly on `device`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    tokenizer = word_tokenizer(SHAPES[shape]["vocab_size"], directory)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype, attn_implementation=attention.register()
        )
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: {shape}, {parameters / 1e9:.2f}B parameters, built in {time.perf_counter() - started:.1f} s"
    )
    engine_config = EngineConfig(model_id=str(directory), dtype=dtype, device=device, cuda_graphs=cuda_graphs)
    return Engine(engine_config, loaded=(tokenizer, model))


class ServedEngine:
    """The shard's gRPC service over `engine` on `unix://{path}`, on the running event loop (the client's:
    the service hands every step to its model thread, so the loop stays free for both)."""

    def __init__(self, engine: Engine, path: str):
        self.engine = engine
        self.service = ShardService(engine, [f"unix://{path}"])
        self.server = grpc_server(self.service, path)

    def set_overlap(self, overlap: bool) -> None:
        """Replace the engine's pipeline; only between runs (every forward of the last run done first)."""
        self.engine.pipeline.settle()
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        self.engine.pipeline.close()
        self.engine.pipeline = StepPipeline(self.engine, overlap=overlap)

    async def close(self) -> None:
        await self.server.stop(0)
        self.service.executor.shutdown(wait=False, cancel_futures=True)
        self.engine.pipeline.close()


@contextlib.asynccontextmanager
async def served(engine: Engine):
    directory = tempfile.mkdtemp(prefix="tgia-gpu-", dir="/tmp")
    path = os.path.join(directory, "shard-0")
    server = ServedEngine(engine, path)
    await server.server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            stub = ShardStub(channel)
            await stub.Warmup(pb.WarmupRequest(batch=_warmup_batch(), max_prefill_tokens=8192))
            yield server, stub
    finally:
        await server.close()


# -- GPU active fraction --------------------------------------------------------------------------------


def active_fraction(trace: dict, trim: float = 0.1) -> tuple[float, float]:
    """(share of the window in which the GPU ran a kernel, copy or memset; that busy time in ms), the window
    being first to last activity with `trim` of it cut at each end (the profiler's own start and stop)."""
    spans = sorted(
        (event["ts"], event["ts"] + event["dur"])
        for event in trace["traceEvents"]
        if event.get("ph") == "X" and event.get("cat") in GPU_ACTIVITY
    )
    if not spans:
        return float("nan"), 0.0
    first, last = spans[0][0], max(end for _, end in spans)
    low, high = first + (last - first) * trim, last - (last - first) * trim
    busy, reach = 0.0, low
    for start, end in spans:
        start, end = max(start, reach), min(end, high)
        if end > start:
            busy += end - start
            reach = end
    return busy / (high - low), busy / 1e3


async def profiled_run(stub, batch_size: int, steps: int, prompt: str, trace_path: Path | None) -> tuple:
    """One run with the profiler on over decode steps [steps/4, 3*steps/4): (active fraction, GPU busy ms
    per step)."""
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
    start, stop = steps // 4, 3 * steps // 4

    def on_decode(n: int) -> None:
        if n == start:
            profiler.start()
        elif n == stop:
            torch.cuda.synchronize()
            profiler.stop()

    await shard_run(stub, batch_size, steps, 3, prompt, on_decode)
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        profiler.export_chrome_trace(file.name)
        with open(file.name) as exported:  # noqa: ASYNC230 (between runs: nothing else waits)
            trace = json.load(exported)
    if trace_path is not None:
        with gzip.open(trace_path, "wt") as out:
            json.dump(trace, out)
    fraction, busy_ms = active_fraction(trace)
    return fraction, busy_ms / ((stop - start) * 0.8)  # the trimmed window holds ~80 % of the steps


# -- measure --------------------------------------------------------------------------------------------


def prompt_of(tokens: int, vocab_size: int) -> str:
    return " ".join(f"w{3 + (i * 7919) % (vocab_size - 3)}" for i in range(tokens))


async def measure(args) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="tgia-model-", dir="/tmp"))
    engine = random_engine(args.shape, args.device, args.dtype, directory, args.cuda_graphs)
    choose_sdpa(args.sdpa)
    prompt = prompt_of(args.prompt_tokens, SHAPES[args.shape]["vocab_size"])
    cuda = engine.device.type == "cuda"
    runs: dict[tuple[bool, int], list[ShardRun]] = {}
    active: dict[tuple[bool, int], tuple[float, float]] = {}
    order = random.Random(args.seed)
    async with served(engine) as (server, stub):
        for overlap in (True, False):  # warm both pipelines' code paths and the allocator
            server.set_overlap(overlap)
            await shard_run(stub, max(args.batch_sizes), 16, 2, prompt)
        if cuda:  # the profiler's first start is slow: not inside a measured window
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]):
                await shard_run(stub, 1, 4, 2, prompt)
        for round_index in range(args.rounds):
            for batch_size in args.batch_sizes:
                modes = [True, False]
                order.shuffle(modes)
                for overlap in modes:
                    server.set_overlap(overlap)
                    run = await shard_run(stub, batch_size, args.new_tokens, 2, prompt)
                    runs.setdefault((overlap, batch_size), []).append(run)
                    print(
                        f"round {round_index} batch {batch_size} overlap {'on ' if overlap else 'off'}: "
                        f"{run.tokens_per_s:.0f} tokens/s, wall {run.wall:.2f} s",
                        flush=True,
                    )
        if cuda:
            for batch_size in args.batch_sizes:
                for overlap in (True, False):
                    server.set_overlap(overlap)
                    name = f"trace-b{batch_size}-{'on' if overlap else 'off'}.json.gz"
                    keep = args.out / name if args.out and batch_size == args.batch_sizes[0] else None
                    steps = min(args.new_tokens, 128)
                    active[(overlap, batch_size)] = await profiled_run(stub, batch_size, steps, prompt, keep)
    return report(runs, active, args)


def report(runs: dict, active: dict, args) -> dict:
    print(
        f"\n#### {args.shape} random weights, {args.dtype}, {args.device}, CUDA graphs {args.cuda_graphs}: "
        f"prompt {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens per request, {args.rounds} rounds, medians\n"
    )
    print(
        "| batch | overlap | tokens/s | GPU active | GPU ms/step | launch ms/step | busy fraction "
        "| step p50 ms | p99 | p99.9 | max | greedy ids on == off |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for batch_size in args.batch_sizes:
        on_ids = [run.token_ids for run in runs[(True, batch_size)]]
        off_ids = [run.token_ids for run in runs[(False, batch_size)]]
        same = all(a == b for a in on_ids for b in off_ids)
        for overlap in (True, False):
            batch_runs = runs[(overlap, batch_size)]
            steps = [s for run in batch_runs for s in run.steps]
            fraction, gpu_step = active.get((overlap, batch_size), (float("nan"), float("nan")))
            launch = median([r.forward / max(len(r.steps), 1) for r in batch_runs]) * 1e3
            row = {
                "tokens_per_s": median([r.tokens_per_s for r in batch_runs]),
                "tokens_per_s_runs": [r.tokens_per_s for r in batch_runs],
                "gpu_active": fraction,
                "gpu_ms_per_step": gpu_step,
                "launch_ms_per_step": launch,
                "busy_fraction": median([r.busy / r.wall for r in batch_runs]),
                "step_ms": {q: percentile(steps, q) * 1e3 for q in (50, 99, 99.9)}
                | {"max": max(steps) * 1e3},
                "greedy_same": same,
            }
            results[f"b{batch_size}-{'on' if overlap else 'off'}"] = row
            cells = [
                f"{row['tokens_per_s']:.0f}",
                f"{fraction:.3f}",
                f"{gpu_step:.2f}",
                f"{launch:.2f}",
                f"{row['busy_fraction']:.3f}",
                *(f"{row['step_ms'][q]:.2f}" for q in (50, 99, 99.9)),
                f"{row['step_ms']['max']:.2f}",
                "yes" if same else "NO",
            ]
            print(f"| {batch_size} | {'on' if overlap else 'off'} | " + " | ".join(cells) + " |")
    ratios = []
    for batch_size in args.batch_sizes:
        paired = zip(runs[(True, batch_size)], runs[(False, batch_size)], strict=True)
        ratio = median([a.tokens_per_s / b.tokens_per_s for a, b in paired])
        results[f"b{batch_size}-ratio"] = ratio
        ratios.append(f"batch {batch_size} **{ratio:.2f}**")
    print("\ntokens/s on/off (median of per-round ratios): " + ", ".join(ratios), flush=True)
    return results


# -- where: the host's time, by thread ---------------------------------------------------------------


class StackSampler:
    """Samples every other thread's Python stack every `interval` s (the GPU machine has no py-spy): where
    each thread's time goes, by its innermost frames."""

    def __init__(self, interval: float = 0.002, depth: int = 4):
        self.interval, self.depth = interval, depth
        self.counts: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="stack-sampler", daemon=True)

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        own = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == own:
                    continue
                frames = []
                while frame is not None and len(frames) < self.depth:
                    code = frame.f_code
                    frames.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                key = (names.get(ident, str(ident)), " < ".join(frames))
                self.counts[key] = self.counts.get(key, 0) + 1

    def report(self, top: int = 12) -> None:
        by_thread: dict[str, int] = {}
        for (thread, _), count in self.counts.items():
            by_thread[thread] = by_thread.get(thread, 0) + count
        for thread, total in sorted(by_thread.items(), key=lambda item: -item[1]):
            print(f"  thread {thread}: {total} samples")
            stacks = sorted(((c, s) for (t, s), c in self.counts.items() if t == thread), reverse=True)
            for count, stack in stacks[:top]:
                print(f"    {count / total:6.1%}  {stack}")


async def where(args) -> None:
    """Per batch size and mode: ms per step, then the sampled stacks of every thread."""
    directory = Path(tempfile.mkdtemp(prefix="tgia-model-", dir="/tmp"))
    engine = random_engine(args.shape, args.device, args.dtype, directory, args.cuda_graphs)
    choose_sdpa(args.sdpa)
    parameter = next(engine.model.parameters())
    print(f"parameters on {parameter.device} ({parameter.dtype}); cache on {engine.device}; sdpa {args.sdpa}")
    prompt = prompt_of(args.prompt_tokens, SHAPES[args.shape]["vocab_size"])
    async with served(engine) as (server, stub):
        if engine.device.type == "cuda":
            print(f"GPU memory allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
        for batch_size in args.batch_sizes:
            for overlap in (True, False):
                server.set_overlap(overlap)
                await shard_run(stub, batch_size, 8, 2, prompt)
                with StackSampler() as sampler:
                    run = await shard_run(stub, batch_size, args.new_tokens, 2, prompt)
                steps = max(len(run.steps), 1)
                mode = "on" if overlap else "off"
                print(
                    f"batch {batch_size} overlap {mode}: {run.wall / steps * 1e3:.1f} ms/step, compute "
                    f"thread {run.forward / steps * 1e3:.1f} ms/step, handlers {run.busy / steps * 1e3:.1f}"
                )
                sampler.report()


# -- smoke ----------------------------------------------------------------------------------------------

SMOKE_WORDS = "the batch decode prefill stream router shard queue kernel tensor cache block slot".split()


def smoke_request(i: int, slots: Slots) -> pb.Request:
    """Mixed lengths (1-40 new tokens); every 5th seeded sampling, every 9th prompt logprobs, every 6th
    top-3 tokens."""
    text = " ".join(SMOKE_WORDS[(i * 7 + j) % len(SMOKE_WORDS)] for j in range(2 + i % 23))
    message = make_request(i, text, slots, 1 + (i * 11) % 40)
    if i % 5 == 0:
        chooser = message.parameters
        chooser.do_sample, chooser.seed, chooser.temperature, chooser.top_k = True, i, 0.7, 30
    message.prefill_logprobs, message.top_n_tokens = i % 9 == 0, 3 if i % 6 == 0 else 0
    return message


async def smoke_generations(stub) -> dict[int, list[pb.Generation]]:
    """24 requests prefilled, 3 decodes, 16 more joining (Prefill with the cached batch), then decode with
    filters until every request finished; every Generation by request id."""
    slots, seen = Slots(), {}

    def take(response) -> pb.CachedBatch | None:
        for g in response.generations:
            seen.setdefault(g.request_id, []).append(g)
        return response.batch if response.HasField("batch") else None

    first = [smoke_request(i, slots) for i in range(24)]
    cached = take(await stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=1, requests=first))))
    for _ in range(3):
        cached = take(await stub.Decode(pb.DecodeRequest(batches=[cached])))
    second = pb.Batch(id=2, requests=[smoke_request(i, slots) for i in range(24, 40)])
    cached = take(await stub.Prefill(pb.PrefillRequest(batch=second, cached_batch=cached)))
    while cached is not None:
        cached = take(await stub.Decode(pb.DecodeRequest(batches=[cached])))
        finished = {i for i, gs in seen.items() if gs[-1].HasField("generated_text")}
        if cached is not None and finished & set(cached.request_ids):
            keep = [i for i in cached.request_ids if i not in finished]
            cached = (
                await stub.FilterBatch(pb.FilterBatchRequest(batch_id=cached.id, request_ids=keep))
            ).batch
    return seen


def smoke_summary(seen: dict[int, list[pb.Generation]]) -> dict[int, tuple]:
    """Per request: (generated ids, their logprobs, prefill logprobs, top-n ids, finish reason)."""
    out = {}
    for i, generations in sorted(seen.items()):
        ids = [t for g in generations for t in g.tokens.ids]
        logprobs = [v for g in generations for v in g.tokens.logprobs]
        prefill = [v for g in generations if g.HasField("prefill_tokens") for v in g.prefill_tokens.logprobs]
        tops = [list(t.ids) for g in generations for t in g.top_tokens]
        out[i] = (ids, logprobs, prefill, tops, generations[-1].generated_text.finish_reason)
    return out


async def smoke(args) -> bool:
    results = {}
    for name, device, overlap in (
        ("cpu", "cpu", False),
        ("device-on", args.device, True),
        ("device-off", args.device, False),
    ):
        graphs = args.cuda_graphs and device != "cpu"
        config = EngineConfig(
            str(args.model), dtype="float32", device=device, overlap=overlap, cuda_graphs=graphs
        )
        engine = Engine(config)
        async with served(engine) as (_, stub):
            results[name] = smoke_summary(await smoke_generations(stub))
        if engine.graphs is not None:
            graphs = engine.graphs
            print(f"smoke {name}: {graphs.steps} graph steps, shapes {graphs.shapes}, on {graphs.enabled}")
        del engine
        gc.collect()  # the device engine's cache (90 % of free memory) goes before the next one sizes its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # NOTE: a seeded request draws from its device's generator: only greedy requests can match the CPU's;
    # seeded ones must match between overlap on and off on the device.
    reference, on, off = results["cpu"], results["device-on"], results["device-off"]
    greedy = [i for i in reference if i % 5 != 0]
    ok = True
    for name, got in (("device-on", on), ("device-off", off)):
        same = sum(got[i][0] == reference[i][0] and got[i][4] == reference[i][4] for i in greedy)
        same_tops = sum(got[i][3] == reference[i][3] for i in greedy)
        pairs = [
            (a, b)
            for i in greedy
            for a, b in zip(got[i][1] + got[i][2], reference[i][1] + reference[i][2], strict=False)
        ]
        worst = max((abs(a - b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))), default=0.0)
        print(
            f"smoke {name} vs CPU, greedy requests: ids and finish reasons equal {same}/{len(greedy)}, top-n "
            f"equal {same_tops}/{len(greedy)}, largest logprob difference {worst:.2e}"
        )
        ok &= same == same_tops == len(greedy) and worst < 1e-3
    same = sum(on[i][0] == off[i][0] and on[i][3:] == off[i][3:] for i in on)  # ids, top-n, finish reason
    print(f"smoke device overlap on == off, all requests (seeded too): {same}/{len(on)}")
    ok &= same == len(on)
    print("SMOKE", "PASS" if ok else "FAIL", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    smoke_parser = commands.add_parser("smoke")
    smoke_parser.add_argument("model", type=Path)
    smoke_parser.add_argument("--device", default="cuda")
    smoke_parser.add_argument("--cuda-graphs", action="store_true", help="the device runs decode graphs")
    measure_parser = commands.add_parser("measure")
    measure_parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    measure_parser.add_argument("--device", default="cuda")
    measure_parser.add_argument("--dtype", default="bfloat16")
    measure_parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1, 64])
    measure_parser.add_argument("--prompt-tokens", type=int, default=128)
    measure_parser.add_argument("--new-tokens", type=int, default=512)
    measure_parser.add_argument("--rounds", type=int, default=3)
    measure_parser.add_argument("--seed", type=int, default=0, help="of the modes' order in each round")
    measure_parser.add_argument("--cuda-graphs", action="store_true", help="decode forwards as CUDA graphs")
    measure_parser.add_argument("--sdpa", choices=sorted(SDPA_CHOICES), default="engine")
    measure_parser.add_argument("--out", type=Path, default=None, help="results.json and traces here")
    where_parser = commands.add_parser("where", help="ms per step and every thread's sampled stacks")
    where_parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    where_parser.add_argument("--device", default="cuda")
    where_parser.add_argument("--dtype", default="bfloat16")
    where_parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    where_parser.add_argument("--prompt-tokens", type=int, default=128)
    where_parser.add_argument("--new-tokens", type=int, default=24)
    where_parser.add_argument("--cuda-graphs", action="store_true", help="decode forwards as CUDA graphs")
    where_parser.add_argument("--sdpa", choices=sorted(SDPA_CHOICES), default="engine")
    args = parser.parse_args()
    if args.command == "where":
        asyncio.run(where(args))
        return
    if args.command == "smoke":
        raise SystemExit(0 if asyncio.run(smoke(args)) else 1)
    results = asyncio.run(measure(args))
    if args.out:
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
