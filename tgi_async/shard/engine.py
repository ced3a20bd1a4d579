"""The model side of the bundled shard: load a transformers causal LM, own the KV cache, run one step.

A step is ONE forward over every unfinished request of a batch, packed as a single row (prefill chunks and
decodes together), then sampling, stopping and detokenization on the rows that produced a token. Not
thread-safe: the server calls it from its single model thread.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from tgi_async.proto import pb
from tgi_async.shard import attention, grammar
from tgi_async.shard.batch import Limits, RequestState, ShardBatch
from tgi_async.shard.decode_context import DecodeContext
from tgi_async.shard.detokenize import token_texts
from tgi_async.shard.generations import (
    generated_text_message,
    generation_message,
    tokens_message,
    top_tokens_message,
)
from tgi_async.shard.kv_cache import (
    BLOCK_SIZE,
    KV_CACHE_DTYPES,
    KVCache,
    KVShape,
    available_cpu_memory,
    blocks_for_budget,
)
from tgi_async.shard.sampling import BatchSampler, top_n_tokens

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# NOTE: below this many parameters a CPU model's matmuls take microseconds: more intra-op threads only add
# synchronization (and spin against the router on a small machine), so such models get one thread.
SMALL_MODEL_PARAMETERS = 50_000_000
# NOTE: on CUDA the cache takes this share of the memory still free after warmup's largest forward (whose
# activations stay reserved by torch's allocator), as TGI's wiggle room does.
CUDA_FREE_MEMORY_SHARE = 0.9


class UnsupportedModelError(ValueError):
    """A model the bundled shard cannot serve correctly."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to load the model and size the cache (from `tgi-async shard serve` flags)."""

    model_id: str
    revision: str | None = None
    dtype: str | None = None  # None: float32 on CPU, bfloat16 (or float16) on CUDA
    kv_cache_dtype: str | None = None  # None: the model's dtype; or fp8_e4m3fn / fp8_e5m2
    trust_remote_code: bool = False
    kv_cache_memory_fraction: float = 0.05  # CPU: share of available RAM for the KV cache
    kv_cache_max_bytes: int = 4 << 30  # CPU: upper bound on the KV cache
    device: str | None = None  # None: cuda when available, else cpu
    num_threads: int | None = None  # torch intra-op threads; None: 1 for small CPU models, else torch's
    prefix_caching: bool = True  # Info.use_prefix_caching: the router may name blocks holding a prompt prefix


@dataclass(frozen=True, slots=True)
class StepResult:
    generations: list[pb.Generation]
    forward_ns: int  # forward + sampling (until results are on the host)
    decode_ns: int  # stopping, detokenization, messages


def choose_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    if requested:
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Engine:
    """A loaded model with its tokenizer and KV cache."""

    def __init__(self, config: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = choose_device(config.device)
        self.dtype = choose_dtype(config.dtype, self.device)
        common = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_id, truncation_side="left", **common)
        self.model = AutoModelForCausalLM.from_pretrained(
            config.model_id, dtype=self.dtype, attn_implementation=attention.register(), **common
        )
        self.model.to(self.device).eval()
        small = sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMETERS
        if config.num_threads is None and self.device.type == "cpu" and small:
            torch.set_num_threads(1)
        self.eos_token_ids = _eos_token_ids(self.tokenizer, GenerationConfig, config.model_id, common)
        self.special_ids = frozenset(self.tokenizer.all_special_ids)
        text_config = self.model.config.get_text_config()
        if getattr(text_config, "attn_logit_softcapping", None):
            raise UnsupportedModelError(
                f"{config.model_id}: attention logit softcapping is not supported by the bundled shard"
            )
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        kv_dtype = KV_CACHE_DTYPES[config.kv_cache_dtype] if config.kv_cache_dtype else self.dtype
        self.kv_shape = KVShape.from_config(self.model.config, kv_dtype)
        self.max_prefill_tokens: int | None = None
        self.grammar_compiler: grammar.GrammarCompiler | None = None  # from Warmup
        self.cache: KVCache | None = None
        if self.device.type == "cpu":
            # NOTE: sized once from the RAM available at startup, so every Warmup reports the same capacity.
            budget = min(available_cpu_memory() * config.kv_cache_memory_fraction, config.kv_cache_max_bytes)
            self.cpu_blocks = blocks_for_budget(int(budget), self.kv_shape, min_blocks=2)
            self._allocate(self.cpu_blocks)

    # -- facts -----------------------------------------------------------------------------------------

    def info(self) -> pb.InfoResponse:
        # NOTE: window_size stays unset even for sliding-window models: TGI's router would then hand out a
        # wrapped window of slots, while this cache keeps every position (the mask applies the window).
        return pb.InfoResponse(
            requires_padding=False,
            dtype=str(self.dtype),
            device_type=self.device.type,
            speculate=0,
            support_chunking=True,
            use_prefix_caching=self.config.prefix_caching,
            attention_impl="paged",
            block_size=BLOCK_SIZE,
        )

    def limits(self) -> Limits | None:
        """What new batches are validated against; None until the cache exists (CUDA: after Warmup)."""
        if self.cache is None:
            return None
        return Limits(self.cache.num_slots, self.eos_token_ids, self.device)

    # -- cache sizing ------------------------------------------------------------------------------------

    def _allocate(self, num_blocks: int) -> None:
        if self.cache is not None and self.cache.num_blocks == num_blocks:
            return
        self.cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = KVCache(self.kv_shape, num_blocks, self.device, self.dtype)
        size = num_blocks * BLOCK_SIZE * self.kv_shape.bytes_per_token
        logger.info("KV cache allocated", extra={"blocks": num_blocks, "bytes": size})

    def warmup(self, request: pb.WarmupRequest) -> pb.WarmupResponse:
        """Size the cache, run warmup's batch for real (its largest prefill), report the token limits."""
        self.max_prefill_tokens = request.max_prefill_tokens or None
        self.grammar_compiler = grammar.compiler_or_none(self.tokenizer)
        unbounded = Limits(1 << 62, self.eos_token_ids, self.device)
        batch = ShardBatch.from_pb(request.batch, self.tokenizer, unbounded, place=True)
        needed = sum(r.num_blocks for r in batch.requests)
        if self.device.type == "cpu":
            self._allocate(max(self.cpu_blocks, needed))
            self._warmup_step(batch)
        else:
            self._allocate(needed)
            self._warmup_step(batch)
            torch.cuda.synchronize(self.device)
            free, _ = torch.cuda.mem_get_info(self.device)
            per_block = self.kv_shape.bytes_per_token * BLOCK_SIZE
            self._allocate(int(free * CUDA_FREE_MEMORY_SHARE) // per_block + needed)
        supported = self.cache.num_slots
        if request.HasField("max_total_tokens"):
            max_total = request.max_total_tokens
        else:
            candidates = [supported, self.max_positions, getattr(self.tokenizer, "model_max_length", None)]
            max_total = min(int(c) for c in candidates if c)
        max_input = request.max_input_tokens if request.HasField("max_input_tokens") else max_total - 1
        return pb.WarmupResponse(
            max_supported_total_tokens=supported, max_input_tokens=max_input, max_total_tokens=max_total
        )

    def _warmup_step(self, batch: ShardBatch) -> None:
        tokens = batch.to_cached_batch().current_tokens
        try:
            self.step(batch)
        except torch.OutOfMemoryError as exc:
            raise RuntimeError(
                f"not enough memory to handle {tokens} prefill tokens: decrease --max-batch-prefill-tokens"
            ) from exc

    def prefetch_grammars(self, batch: pb.Batch) -> None:
        """Start compiling the batch's grammars not compiled yet (thread-safe, returns at once)."""
        if self.grammar_compiler is not None:
            specs = (grammar.grammar_spec(r.parameters) for r in batch.requests)
            self.grammar_compiler.prefetch([spec for spec in specs if spec is not None])

    # -- one step ------------------------------------------------------------------------------------------

    def step(self, batch: ShardBatch) -> StepResult:
        """Advance every unfinished request of `batch` by one forward; returns the tokens produced."""
        with torch.inference_mode():
            return self._step(batch)

    def _step(self, batch: ShardBatch) -> StepResult:
        start = time.perf_counter_ns()
        # NOTE: unlike TGI's shards, a finished request is never computed again, though it stays in the batch
        # until FilterBatch: a pipelined router learns of a finish one step late, and the request must then
        # neither emit tokens nor write keys/values past the slots it was given.
        active = [i for i, r in enumerate(batch.requests) if not r.finished]
        requests = [batch.requests[i] for i in active]
        if not requests:
            return StepResult([], 0, 0)
        input_ids: list[int] = []
        positions: list[int] = []
        keep: list[int] = []  # packed positions whose logits are needed
        last_row: list[int] = []  # per request: row of `keep` holding its last position
        for r in requests:
            offset = len(input_ids)
            input_ids.extend(r.all_ids[r.cache_len : r.cache_len + r.chunk_len])
            positions.extend(range(r.cache_len, r.cache_len + r.chunk_len))
            if r.prefill_logprobs and r.prefilling:
                keep.extend(range(offset, offset + r.chunk_len))
            elif _produces(r):
                keep.append(offset + r.chunk_len - 1)
            last_row.append(len(keep) - 1)
        device = self.device
        position_tensor = torch.tensor(positions, dtype=torch.long, device=device)
        producing = [j for j, r in enumerate(requests) if _produces(r)]
        sampler = _producing_sampler(batch, active, producing)
        # NOTE: grammar masks depend only on tokens already chosen: computed while the forward runs.
        grammar_masks = sampler.start_grammar_masks() if sampler is not None else None
        table = batch.slot_table if len(active) == len(batch) else batch.slot_table[active]
        dense = self._decode_context(batch, requests)
        layout = attention.build_layout(
            table,
            [r.cache_len for r in requests],
            [r.chunk_len for r in requests],
            position_tensor,
            packed=False if dense is not None else None,  # the dense context is laid out per sequence
        )
        output = self.model(
            input_ids=torch.tensor([input_ids], dtype=torch.long, device=device),
            position_ids=position_tensor[None],
            use_cache=False,
            logits_to_keep=torch.tensor(keep or [0], dtype=torch.long, device=device),
            **{attention.STEP_KWARG: attention.PagedStep(self.cache, layout, dense)},
        )
        if dense is not None:
            dense.end_step()
        logits = output.logits[0]

        sampled = self._sample(sampler, requests, producing, logits, last_row, grammar_masks)
        prompt_logprobs = self._prefill_logprobs(requests, logits, last_row)
        start_decode = time.perf_counter_ns()

        generations = []
        for j, r in enumerate(requests):
            if j in prompt_logprobs:
                _append_prefill(r, prompt_logprobs[j], self.tokenizer)
            r.cache_len += r.chunk_len
            if j in sampled:
                generations.append(self._advance(r, batch, active[j], *sampled[j]))
        self._schedule_chunks(batch)
        return StepResult(generations, start_decode - start, time.perf_counter_ns() - start_decode)

    def _decode_context(self, batch: ShardBatch, requests: list[RequestState]) -> DecodeContext | None:
        """The batch's dense decode context for this step (CPU, decode-only steps); None: gather instead."""
        if (
            self.device.type != "cpu"
            or self.kv_shape.dtype != self.dtype  # a quantized cache: keep reading what it stores
            or any(r.chunk_len != 1 for r in requests)
        ):
            batch.decode_context = None
            return None
        request_ids, lens = tuple(r.id for r in requests), [r.cache_len for r in requests]
        context = batch.decode_context
        if context is None or not context.serves(request_ids, lens):
            context = DecodeContext.create(request_ids, lens, self.kv_shape, self.dtype)
            batch.decode_context = context
        if context is not None:
            context.start_step()
        return context

    def _sample(self, sampler, requests, producing, logits, last_row, grammar_masks):
        """{request index: (token id, logprob, top tokens or None)} for the requests that produce a token."""
        if not producing:
            return {}
        index = torch.tensor([last_row[j] for j in producing], dtype=torch.long, device=logits.device)
        histories = [requests[j].all_ids for j in producing]
        out = sampler(logits.index_select(0, index).float(), histories, grammar_masks)
        chosen = out.logprobs.gather(1, out.next_ids[:, None])[:, 0]
        top_n = [requests[j].top_n_tokens for j in producing]
        tops = top_n_tokens(out.logprobs, top_n) if any(top_n) else [None] * len(producing)
        ids, logprobs = out.next_ids.tolist(), chosen.tolist()
        return {j: (ids[k], logprobs[k], tops[k] if top_n[k] else None) for k, j in enumerate(producing)}

    def _prefill_logprobs(self, requests, logits, last_row) -> dict[int, list[float]]:
        """{request index: logprobs of the prompt tokens this chunk predicts} (model logits, log-softmax)."""
        rows, targets, owners = [], [], []
        for j, r in enumerate(requests):
            if not (r.prefill_logprobs and r.prefilling):
                continue
            predicted = r.all_ids[r.cache_len + 1 : min(r.cache_len + r.chunk_len, r.prompt_len - 1) + 1]
            first = last_row[j] - r.chunk_len + 1
            rows.extend(range(first, first + len(predicted)))
            targets.extend(predicted)
            owners.append((j, len(predicted)))
        if not owners:
            return {}
        if rows:
            selected = logits.index_select(0, torch.tensor(rows, device=logits.device)).float()
            target = torch.tensor(targets, device=logits.device)[:, None]
            values = (selected.gather(1, target)[:, 0] - torch.logsumexp(selected, dim=-1)).tolist()
        else:
            values = []
        result, offset = {}, 0
        for j, count in owners:
            result[j] = values[offset : offset + count]
            offset += count
        return result

    def _advance(self, r: RequestState, batch: ShardBatch, row: int, token_id: int, logprob: float, top):
        """Record a generated token: text, stopping, the Generation message."""
        r.all_ids.append(token_id)
        text = r.detokenizer.push(token_id)
        stop, reason = r.stopping(token_id, text)
        prefill = None
        if r.prefill_tokens is not None:
            prefill = tokens_message(*r.prefill_tokens, special_ids=None)
            r.prefill_tokens = None
        generated = None
        if stop:
            r.finished, r.chunk_len = True, 0
            seed = batch.sampler.seeds[row] if batch.sampler.do_sample[row] else None
            output = r.detokenizer.generated_text(skip_special_tokens=True)
            generated = generated_text_message(output, r.stopping.current_tokens, reason, seed)
        else:
            r.chunk_len = 1
        token = tokens_message([token_id], [logprob], [text], self.special_ids)
        tops = top_tokens_message(self.tokenizer, top, self.special_ids) if top is not None else None
        return generation_message(r.id, token, prefill, tops, generated)

    def _schedule_chunks(self, batch: ShardBatch) -> None:
        """Next chunk of each request still prefilling, newest first, within TGI's prefill token budget."""
        budget = (self.max_prefill_tokens or math.inf) - (len(batch) - 1)
        for r in reversed(batch.requests):
            if r.finished or not r.prefilling:
                continue
            chunk = max(min(r.prompt_len - r.cache_len, budget), 1)
            r.chunk_len = int(chunk)
            budget -= chunk


def _producing_sampler(batch: ShardBatch, active: list[int], producing: list[int]) -> BatchSampler | None:
    """The sampler of the batch rows that produce a token this step (sharing their per-request state)."""
    if not producing:
        return None
    rows = [active[j] for j in producing]
    return batch.sampler if rows == list(range(len(batch))) else batch.sampler.filter(rows)


def _produces(r: RequestState) -> bool:
    """Whether the next forward of `r` reaches the end of its known tokens (and so samples one)."""
    return r.cache_len + r.chunk_len == len(r.all_ids)


def _append_prefill(r: RequestState, logprobs: list[float], tokenizer) -> None:
    """Extend the request's prefill tokens with this chunk's (NaN for the first and the cached tokens)."""
    start = r.cache_len + 1
    ids = r.all_ids[start : start + len(logprobs)]
    if r.prefill_tokens is None:
        head = r.all_ids[:start]
        ids, logprobs = head + ids, [math.nan] * len(head) + logprobs
        r.prefill_tokens = ([], [], [])
    r.prefill_tokens[0].extend(ids)
    r.prefill_tokens[1].extend(logprobs)
    r.prefill_tokens[2].extend(token_texts(tokenizer, ids))


def _eos_token_ids(tokenizer, generation_config_cls, model_id: str, common: dict) -> frozenset[int]:
    """The generation config's eos ids when it lists several (as TGI), else the tokenizer's eos."""
    try:
        eos = generation_config_cls.from_pretrained(model_id, **common).eos_token_id
    except OSError:
        eos = None
    if isinstance(eos, (list, set, tuple)):
        return frozenset(int(i) for i in eos)
    return frozenset() if tokenizer.eos_token_id is None else frozenset({int(tokenizer.eos_token_id)})
