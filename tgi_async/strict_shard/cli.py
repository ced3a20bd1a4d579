"""`tgi-async shard serve MODEL_ID --simulate PROFILE`: the strict shard from the shard command's flags.

MODEL_ID gives only the tokenizer (prompts are tokenized as TGI's shard does, so the router's KV allocations
are checked against the real prompt lengths); no weights are loaded.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import replace

from tgi_async.shard.cli import prefix_caching
from tgi_async.strict_shard.executor import SerialExecutor, parse_fault
from tgi_async.strict_shard.profile import load_profile
from tgi_async.strict_shard.server import serve
from tgi_async.strict_shard.shard import StrictShard


def build(args: argparse.Namespace) -> tuple[StrictShard, SerialExecutor]:
    profile = load_profile(
        args.simulate,
        kind=args.kind,
        block_size=args.block_size,
        speculate=args.speculate,
        prefix_caching=args.prefix_caching
        if args.prefix_caching is not None or "PREFIX_CACHING" not in os.environ
        else prefix_caching(None, os.environ),
    )
    if profile.kind == "padded" and profile.speculate:
        profile = replace(profile, speculate=0)
    faults = dict(parse_fault(spec) for spec in args.fault)
    shard = strict_shard(args.model_id, profile, seed=args.seed, eos_rate=args.eos_rate)
    shard.request_logprobs = args.request_logprobs
    shard.refuse_prompts = tuple(args.refuse_prompt)
    executor = SerialExecutor(
        time_scale=args.time_scale,
        reorder=None if args.reorder_seed is None else random.Random(args.reorder_seed),
        faults=faults,
        fault_rate=args.fault_rate,
        start_delay_s=args.start_delay_ms / 1000,
    )
    return shard, executor


def strict_shard(model_id: str, profile, seed: int = 0, eos_rate: float = 0.0) -> StrictShard:
    """A strict shard tokenizing with MODEL_ID's tokenizer, loaded as TGI's shard loads it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id, truncation_side="left")

    def tokenize(text: str, truncate: int, add_special_tokens: bool) -> list[int]:
        encoded = tokenizer(
            text,
            add_special_tokens=add_special_tokens,
            truncation=bool(truncate),
            max_length=truncate or None,
        )
        return list(encoded["input_ids"])

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return StrictShard(
        profile,
        tokenize,
        eos_token_id=eos,
        eos_text=tokenizer.eos_token or "",
        seed=seed,
        eos_rate=eos_rate,
    )


async def serve_simulated(shard: StrictShard, executor: SerialExecutor, uds_path: str) -> int:
    return await serve(shard, executor, uds_path)
