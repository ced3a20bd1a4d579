"""The model side of the bundled shard: load a transformers causal LM, own the KV cache, run one step.

A forward runs over rows of a batch packed as a single row (prefill chunks and decodes together) and samples
the rows that reach their last token (`execute`, on the pipeline's compute thread); `finish` then applies it
on the host: cache progress, stopping, detokenization, messages. Which rows a forward takes, and when, is the
step pipeline's (tgi_async/shard/step_pipeline.py). `step` is called from the server's single model thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from tgi_async.proto import pb
from tgi_async.shard import attention, grammar
from tgi_async.shard.batch import Limits, RequestState, ShardBatch
from tgi_async.shard.decode_context import DecodeContext
from tgi_async.shard.decode_graphs import DecodeGraphs
from tgi_async.shard.detokenize import special_token_ids, token_texts
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
from tgi_async.shard.sampling import top_n_tokens
from tgi_async.shard.step_inputs import PreparedStep, StepOutput
from tgi_async.shard.step_pipeline import StepPipeline, StepResult

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# NOTE: below this many parameters a CPU model's matmuls take microseconds: more intra-op threads only add
# synchronization (and spin against the router on a small machine), so such models get one thread.
SMALL_MODEL_PARAMETERS = 50_000_000
# NOTE: on CUDA the cache takes this share of the memory still free after warmup's largest forward (whose
# activations stay reserved by torch's allocator), as TGI's wiggle room does.
CUDA_FREE_MEMORY_SHARE = 0.9
# NOTE: decode graphs are captured after Warmup sized the cache; their shared pool grows to the largest
# graph's intermediates (about one layer's gathered keys and values at its batch and context bucket).
GRAPH_POOL_SHARE = 0.1


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
    overlap: bool = True  # compute step N+1 while the host finishes step N (tgi_async/shard/step_pipeline.py)
    cuda_graphs: bool = False  # decode forwards as CUDA graphs (tgi_async/shard/decode_graphs.py)


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

    def __init__(self, config: EngineConfig, loaded: tuple[Any, torch.nn.Module] | None = None):
        """`loaded`: (tokenizer, model) already built, e.g. random weights made on the GPU by a benchmark
        (the model must use `attention.register()`'s attention); None: load `config.model_id`."""
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
        if loaded is None:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model_id, truncation_side="left", **common)
            self.model = AutoModelForCausalLM.from_pretrained(
                config.model_id, dtype=self.dtype, attn_implementation=attention.register(), **common
            )
        else:
            self.tokenizer, self.model = loaded
        self.model.to(self.device).eval()
        small = sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMETERS
        if config.num_threads is None and self.device.type == "cpu" and small:
            torch.set_num_threads(1)
        self.eos_token_ids = _eos_token_ids(self.tokenizer, GenerationConfig, config.model_id, common)
        self.special_ids = special_token_ids(self.tokenizer)
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
        self.pipeline = StepPipeline(self, overlap=config.overlap)
        self.graphs = DecodeGraphs(self) if config.cuda_graphs else None
        if self.device.type == "cpu":
            # NOTE: sized once from the RAM available at startup, so every Warmup reports the same capacity.
            budget = min(available_cpu_memory() * config.kv_cache_memory_fraction, config.kv_cache_max_bytes)
            self.cpu_blocks = blocks_for_budget(int(budget), self.kv_shape, min_blocks=2)
            self._allocate(self.cpu_blocks)

    @property
    def dense_decode(self) -> bool:
        """Decode-only steps may keep a dense copy of their context (CPU, unquantized cache)."""
        return self.device.type == "cpu" and self.kv_shape.dtype == self.dtype

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
        return Limits(self.cache.num_slots, self.eos_token_ids, self.special_ids, self.device)

    # -- cache sizing ------------------------------------------------------------------------------------

    def _allocate(self, num_blocks: int) -> None:
        if self.cache is not None and self.cache.num_blocks == num_blocks:
            return
        self.cache = None
        if self.graphs is not None:
            self.graphs = DecodeGraphs(self)  # captured graphs address the old cache's tensors
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = KVCache(self.kv_shape, num_blocks, self.device, self.dtype)
        size = num_blocks * BLOCK_SIZE * self.kv_shape.bytes_per_token
        logger.info("KV cache allocated", extra={"blocks": num_blocks, "bytes": size})

    def warmup(self, request: pb.WarmupRequest) -> pb.WarmupResponse:
        """Size the cache, run warmup's batch for real (its largest prefill), report the token limits."""
        self.max_prefill_tokens = request.max_prefill_tokens or None
        self.grammar_compiler = grammar.compiler_or_none(self.tokenizer)
        unbounded = Limits(1 << 62, self.eos_token_ids, self.special_ids, self.device)
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
            share = CUDA_FREE_MEMORY_SHARE - (GRAPH_POOL_SHARE if self.graphs is not None else 0.0)
            self._allocate(int(free * share) // per_block + needed)
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
            self.pipeline.retain(())
            self.pipeline.settle()  # a speculative forward of warmup's batch counts in its memory, not later
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
        """Advance every unfinished request of `batch` by one forward; returns the tokens produced.

        NOTE: unlike TGI's shards, a finished request is never computed again, though it stays in the batch
        until FilterBatch: a pipelined router learns of a finish one step late, and the request must then
        neither emit tokens nor write keys/values past the slots it was given.
        """
        return self.pipeline.step(batch)

    def execute(self, prepared: PreparedStep) -> StepOutput:
        """Run one prepared forward and choose its tokens; the results stay on the device (compute thread)."""
        start = time.perf_counter_ns()
        input_ids = prepared.input_ids  # filled in below: a step runs once
        for source, sources, targets in prepared.carries:
            input_ids[targets] = source.result().next_ids.index_select(0, sources)
        graph_shape = self.graphs.shape(prepared) if self.graphs is not None else None
        if graph_shape is not None:
            # sampled below, before the next replay overwrites the graph's logits
            logits = self.graphs.run(prepared, input_ids, graph_shape)
        else:
            dense = self._decode_context(prepared)
            output = self.model(
                input_ids=input_ids[None],
                position_ids=prepared.positions[None],
                use_cache=False,
                logits_to_keep=prepared.keep,
                **{attention.STEP_KWARG: attention.PagedStep(self.cache, prepared.layout, dense)},
            )
            if dense is not None:
                dense.end_step()
            logits = output.logits[0]
        next_ids, chosen, logprobs = self.sample(prepared, logits)
        prompt_values = None
        if prepared.prompt is not None:
            selected = logits.index_select(0, prepared.prompt.rows).float()
            target = selected.gather(1, prepared.prompt.targets)[:, 0]
            prompt_values = target - torch.logsumexp(selected, dim=-1)
        return StepOutput(next_ids, chosen, logprobs, prompt_values, time.perf_counter_ns() - start)

    def sample(self, prepared: PreparedStep, logits: torch.Tensor):
        """The one sampling entry point: (next ids [P], their logprobs [P], logprobs [P, V] when a row asks
        for top-n tokens) of the producing rows, from the kept `logits`."""
        if prepared.sampler is None:
            empty = torch.empty(0, dtype=torch.long, device=logits.device)
            return empty, empty.float(), None
        scores = logits.index_select(0, prepared.sample_index).float()
        histories = prepared.histories or [()] * len(prepared.producing)
        out = prepared.sampler(scores, histories, prepared.grammar_masks)
        chosen = out.logprobs.gather(1, out.next_ids[:, None])[:, 0]
        return out.next_ids, chosen, out.logprobs if any(prepared.top_n) else None

    def finish(
        self, prepared: PreparedStep, output: StepOutput, dropped: Collection[int] = ()
    ) -> dict[int, pb.Generation]:
        """Apply a computed step to its requests (host): prompt logprobs, cache progress, then each sampled
        token's text, stopping and message. Rows in `dropped` stay untouched and report nothing.
        Returns {id(request): its Generation}."""
        if output.copied is not None:
            output.copied.synchronize()  # CUDA: the one wait for this step's results
            ids, chosen, *prompt_values = (t.tolist() for t in output.host)
        else:
            ids, chosen = output.next_ids.tolist(), output.chosen.tolist()
            prompt_values = [] if output.prompt_values is None else [output.prompt_values.tolist()]
        prompt, offset = {}, 0
        for j, count in prepared.prompt.owners if prepared.prompt is not None else ():
            prompt[j] = prompt_values[0][offset : offset + count]
            offset += count
        tops = None
        if output.logprobs is not None:
            tops = top_n_tokens(output.logprobs, prepared.top_n)
        sampled = {j: k for k, j in enumerate(prepared.producing)}
        generations = {}
        for j, row in enumerate(prepared.rows):
            if j in dropped:
                continue
            r = row.request
            if r.cache_len != row.cache_len:
                raise AssertionError(f"request {r.id}: a step from {row.cache_len}, its cache {r.cache_len}")
            if j in prompt:
                _append_prefill(r, prompt[j], self.tokenizer)
            r.cache_len += row.chunk_len
            k = sampled.get(j)
            if k is not None:
                seed = prepared.sampler.seeds[k] if prepared.sampler.do_sample[k] else None
                top = tops[k] if tops is not None and prepared.top_n[k] else None
                generations[id(r)] = self._advance(r, seed, ids[k], chosen[k], top)
        return generations

    def _decode_context(self, prepared: PreparedStep) -> DecodeContext | None:
        """The batch's dense decode context for this step (CPU, decode-only steps); None: gather instead.

        NOTE: read and advanced only by the forward (the compute thread, in step order)."""
        batch = prepared.batch
        if not prepared.dense:
            batch.decode_context = None
            return None
        request_ids = tuple(row.request.id for row in prepared.rows)
        lens = [row.cache_len for row in prepared.rows]
        context = batch.decode_context
        if context is None or not context.serves(request_ids, lens):
            context = DecodeContext.create(request_ids, lens, self.kv_shape, self.dtype)
            batch.decode_context = context
        if context is not None:
            context.start_step()
        return context

    def _advance(self, r: RequestState, seed: int | None, token_id: int, logprob: float, top):
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
            text += r.detokenizer.finish()  # no bytes left pending: the stream holds the whole text
            generated = generated_text_message(
                r.detokenizer.generated_text(), r.stopping.current_tokens, reason, seed
            )
        else:
            r.chunk_len = 1
        token = tokens_message([token_id], [logprob], [text], self.special_ids)
        tops = top_tokens_message(self.tokenizer, top, self.special_ids) if top is not None else None
        return generation_message(r.id, token, prefill, tops, generated)

    def schedule_chunks(self, batch: ShardBatch) -> None:
        """Next chunk of each request still prefilling, newest first, within TGI's prefill token budget."""
        budget = (self.max_prefill_tokens or math.inf) - (len(batch) - 1)
        for r in reversed(batch.requests):
            if r.finished or not r.prefilling:
                continue
            chunk = max(min(r.prompt_len - r.cache_len, budget), 1)
            r.chunk_len = int(chunk)
            budget -= chunk


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
