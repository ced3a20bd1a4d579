"""Helpers for the bundled shard's tests: requests with router-style slots, a reference model, a driver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import torch

from tgi_async.client.shard_client import warmup_request
from tgi_async.proto import pb

BLOCK_SIZE = 16
GREEDY = pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0)

# The prefill token budget the tests warm the shard up with: it bounds how a chunked prompt continues.
MAX_PREFILL_TOKENS = 64


def router_warmup_request(
    max_input_tokens: int | None,
    max_prefill_tokens: int,
    max_total_tokens: int | None,
    max_batch_size: int | None = None,
) -> pb.WarmupRequest:
    """Warmup exactly as TGI's router builds it (our router's builder, which mirrors TGI's)."""
    return warmup_request(max_input_tokens, max_prefill_tokens, max_total_tokens, max_batch_size)


class Blocks:
    """A router-like block allocator: blocks 1..N-1 (block 0 is the health check's), slots per token."""

    def __init__(self, num_blocks: int = 4096, first: int = 1):
        self.free = list(range(num_blocks - 1, first - 1, -1))

    def allocate(self, tokens: int) -> tuple[list[int], list[int]]:
        count = -(-tokens // BLOCK_SIZE)
        blocks = [self.free.pop() for _ in range(count)]
        slots = [b * BLOCK_SIZE + o for b in blocks for o in range(BLOCK_SIZE)][:tokens]
        return blocks, slots


def request(
    request_id: int,
    text: str,
    blocks: Blocks | None,
    prompt_tokens: int,
    max_new_tokens: int = 8,
    parameters: pb.NextTokenChooserParameters = GREEDY,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    extra_slots: int = 0,
    **fields,
) -> pb.Request:
    """A request as TGI's router builds it: prompt + max_new_tokens - 1 slots (plus `extra_slots`)."""
    message = pb.Request(
        id=request_id,
        inputs=text,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=text)]),
        parameters=parameters,
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=max_new_tokens, stop_sequences=list(stop), ignore_eos_token=ignore_eos
        ),
        **{"add_special_tokens": True, **fields},
    )
    if blocks is not None:
        block_ids, slots = blocks.allocate(prompt_tokens + max_new_tokens - 1 + extra_slots)
        message.blocks.extend(block_ids)
        message.slots.extend(slots)
    return message


def batch(batch_id: int, requests: Sequence[pb.Request]) -> pb.Batch:
    return pb.Batch(id=batch_id, requests=list(requests), size=len(requests))


@dataclass
class Outputs:
    """What the shard produced per request id."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    finished: dict[int, pb.GeneratedText] = field(default_factory=dict)
    generations: list[pb.Generation] = field(default_factory=list)

    def add(self, generations: Sequence[pb.Generation]) -> None:
        for g in generations:
            self.generations.append(g)
            self.tokens.setdefault(g.request_id, []).extend(g.tokens.ids)
            if g.HasField("generated_text"):
                self.finished[g.request_id] = g.generated_text


async def decode_until_done(stub, cached: pb.CachedBatch | None, outputs: Outputs, max_steps: int = 200):
    """Decode, filtering finished requests after each step as TGI's router does, until the batch is gone."""
    steps = 0
    while cached is not None and steps < max_steps:
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        outputs.add(response.generations)
        cached = await filter_finished(stub, response.batch if response.HasField("batch") else None, outputs)
        steps += 1
    assert cached is None, "the batch did not finish"
    return steps


async def filter_finished(stub, cached: pb.CachedBatch | None, outputs: Outputs) -> pb.CachedBatch | None:
    if cached is None:
        return None
    keep = [i for i in cached.request_ids if i not in outputs.finished]
    if len(keep) == len(cached.request_ids):
        return cached
    if not keep:
        await stub.ClearCache(pb.ClearCacheRequest(id=cached.id))
        return None
    response = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=cached.id, request_ids=keep))
    return response.batch


async def expect_error(call, code: grpc.StatusCode, *fragments: str) -> str:
    """Await `call`, expecting an RpcError with `code` whose details contain every fragment."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == code, (exc.code(), exc.details())
        for fragment in fragments:
            assert fragment in exc.details(), exc.details()
        return exc.details()
    raise AssertionError(f"expected {code}, the call succeeded")


class Reference:
    """The same model in plain transformers (its own attention, no paged cache): the ground truth."""

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos = self.tokenizer.eos_token_id
        self.generation_config = GenerationConfig

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def greedy(self, text: str, max_new_tokens: int) -> list[int]:
        """model.generate(do_sample=False): stops at EOS (included) or after max_new_tokens."""
        prompt = torch.tensor([self.ids(text)])
        config = self.generation_config(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with torch.inference_mode():
            out = self.model.generate(prompt, generation_config=config)
        return out[0, prompt.shape[1] :].tolist()

    def log_softmax(self, ids: Sequence[int]) -> torch.Tensor:
        """`[len(ids), V]` log-probabilities of the next token after each prefix."""
        with torch.inference_mode():
            logits = self.model(torch.tensor([list(ids)])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)
