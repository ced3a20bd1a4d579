"""What each generate.v3 RPC does to the strict shard's batches, as TGI v3.3.7's server.py + FlashCausalLM /
CausalLM do it (docs/strict-shard.md cites the source of each rule). No I/O, no clock: `executor.py` runs the
calls one at a time and sleeps for the `Step.duration_ms` they report.

Errors are the exceptions TGI raises, with its messages: ValueError / KeyError / AssertionError come back as
gRPC INTERNAL and the shard goes on; RuntimeError (NotImplementedError, CUDA errors, OOM, and `KvViolation`)
comes back as INTERNAL and the shard exits. Batches named by a failing call are lost, as in TGI (it pops them
before it checks anything).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tgi_async.proto import pb
from tgi_async.shard.generations import generated_text_message, generation_message, tokens_message
from tgi_async.shard.prompt import BatchError, prompt_text
from tgi_async.strict_shard import tokens
from tgi_async.strict_shard.batch import LIVENESS_ID, SimBatch, SimRequest, request_from_pb
from tgi_async.strict_shard.kv import KvLedger
from tgi_async.strict_shard.profile import Profile

Tokenize = Callable[[str, int, bool], list[int]]  # (text, truncate, add_special_tokens) -> ids


@dataclass(frozen=True, slots=True)
class Step:
    """A call's answer and how long the shard's handler took (simulated)."""

    response: object
    duration_ms: float = 0.0


@dataclass(slots=True)
class StrictShard:
    profile: Profile
    tokenize: Tokenize
    eos_token_id: int
    eos_text: str = "</s>"
    seed: int = 0
    eos_rate: float = 0.0
    request_logprobs: bool = False  # flash: TGI's REQUEST_LOGPROBS=1 (off by default: no prefill_tokens)
    cache: dict[int, SimBatch] = field(default_factory=dict)
    max_prefill_tokens: int | None = None  # from the last Warmup
    ledger: KvLedger = field(init=False)
    # requests that left the shard, by how many forwards computed them after they stopped
    after_stop: Counter[int] = field(default_factory=Counter)
    received: deque[pb.Request] = field(default_factory=lambda: deque(maxlen=1024))  # Prefills' requests
    # TEST ONLY: a Prefill holding a request whose prompt contains one of these fails as TGI's does on a
    # request its from_pb cannot build (a grammar that does not compile, tokenizers not aligned): ValueError,
    # INTERNAL, before any cached batch is taken; nothing is cached and the shard goes on.
    refuse_prompts: tuple[str, ...] = ()
    # TEST ONLY: the bundled shard's way (tgi_async/shard/engine.py `step`): a stopped request is never
    # computed again and reports nothing, so a batch's last answer may not name the requests that stopped
    # before it. TGI's shards compute and report every request of the batch.
    skip_stopped: bool = False

    def __post_init__(self) -> None:
        self.ledger = KvLedger(self.profile.block_size)

    @property
    def flash(self) -> bool:
        return self.profile.kind == "flash"

    @property
    def speculate(self) -> int:
        return self.profile.speculate if self.flash else 0

    # -- RPCs ------------------------------------------------------------------------------------------------
    def info(self) -> pb.InfoResponse:
        p = self.profile
        return pb.InfoResponse(
            requires_padding=not self.flash,
            dtype=p.dtype,
            device_type=p.device_type,
            speculate=self.speculate,
            support_chunking=p.supports_chunking,
            use_prefix_caching=p.uses_prefix_caching,
            attention_impl=p.attention if self.flash else "paged",
            block_size=p.block_size if self.flash else 16,
        )

    def clear_cache(self, request: pb.ClearCacheRequest) -> pb.ClearCacheResponse:
        ids = [request.id] if request.HasField("id") else list(self.cache)
        for batch_id in ids:
            batch = self.cache.pop(batch_id, None)
            if batch is not None:
                self._release(batch.requests)
        return pb.ClearCacheResponse()

    def warmup(self, request: pb.WarmupRequest) -> Step:
        self.max_prefill_tokens = request.max_prefill_tokens
        batch = self._batch_from_pb(request.batch, warmup=True)
        prompt_tokens = sum(r.prompt_len for r in batch.requests)
        duration = self.profile.forward_ms(prompt_tokens, 0, 0)
        supported = None
        if self.flash:
            free = self.profile.free_kv_bytes(prompt_tokens)
            if free <= 0:
                raise RuntimeError(
                    f"Not enough memory to handle {prompt_tokens} prefill tokens. "
                    "You need to decrease `--max-batch-prefill-tokens`"
                )
            block_bytes = self.profile.kv_bytes_per_token * self.profile.block_size
            warmup_blocks = sum(len(r.blocks) for r in batch.requests)
            num_blocks = int(free // block_bytes) + warmup_blocks
            supported = num_blocks * self.profile.block_size
            self.ledger.num_slots = supported
        if request.HasField("max_total_tokens"):
            max_total = request.max_total_tokens
        elif self.flash and self.profile.supports_chunking:
            max_total = min(supported or 0, self.profile.max_position_embeddings)
        elif self.flash:
            max_total = prompt_tokens  # TGI: the warmup batch's cache lengths after its forward
        else:
            max_total = len(batch)  # CausalLM: len(input_ids) after the step, i.e. the batch size
        max_input = request.max_input_tokens if request.HasField("max_input_tokens") else max_total - 1
        response = pb.WarmupResponse(max_input_tokens=max_input, max_total_tokens=max_total)
        if supported is not None:
            response.max_supported_total_tokens = supported
        return Step(response, duration)

    def prefill(self, request: pb.PrefillRequest) -> Step:
        new = self._batch_from_pb(request.batch)
        self.received.extend(request.batch.requests)
        joined = request.HasField("cached_batch") and self.flash and self.profile.supports_chunking
        if joined:
            cached = self._pop(request.cached_batch.id)
            cached.concatenate(new)  # the cached batch's id survives
            new = cached
        # NOTE: without chunking TGI ignores cached_batch: it is neither read nor popped
        return self._generate(new, pb.PrefillResponse, concatenated=joined)

    def decode(self, request: pb.DecodeRequest) -> Step:
        if not request.batches:
            raise ValueError("Must provide at least one batch")
        batches = [
            self._pop(b.id) for b in request.batches
        ]  # popped one by one: an unknown id loses the rest
        first = batches[0]
        for other in batches[1:]:
            first.concatenate(other)
        return self._generate(first, pb.DecodeResponse, concatenated=len(batches) > 1)

    def filter_batch(self, request: pb.FilterBatchRequest) -> pb.FilterBatchResponse:
        batch = self._pop(request.batch_id)
        if not request.request_ids:
            self._release(batch.requests)
            raise ValueError("Batch must have at least one request")
        try:
            removed = batch.keep(list(request.request_ids))
        except KeyError:
            self._release(batch.requests)
            raise
        self._release(removed)
        self.cache[batch.id] = batch
        return pb.FilterBatchResponse(batch=batch.to_pb(self.speculate))

    def lose(self, request: object) -> None:
        """What a failing step does to the batches it names in TGI: they are popped, then lost."""
        if isinstance(request, pb.DecodeRequest):
            ids = [b.id for b in request.batches]
        elif isinstance(request, pb.FilterBatchRequest):
            ids = [request.batch_id]
        elif isinstance(request, pb.PrefillRequest) and request.HasField("cached_batch") and self.flash:
            ids = [request.cached_batch.id]
        else:
            ids = []
        for batch_id in ids:
            batch = self.cache.pop(batch_id, None)
            if batch is not None:
                self._release(batch.requests)

    # -- batches ---------------------------------------------------------------------------------------------
    def _pop(self, batch_id: int) -> SimBatch:
        batch = self.cache.pop(batch_id, None)
        if batch is None:
            raise ValueError(f"Batch ID {batch_id} not found in cache.")
        return batch

    def _release(self, requests: list[SimRequest]) -> None:
        for r in requests:
            self.after_stop[r.steps_after_stop] += 1
            if r.slots is not None:
                self.ledger.release(r.id, r.slots)

    def _batch_from_pb(self, message: pb.Batch, warmup: bool = False) -> SimBatch:
        requests, next_block = [], 0
        for m in message.requests:
            try:
                text = prompt_text(m)
            except BatchError as exc:  # TGI: NotImplementedError, a RuntimeError: the shard exits
                none = "no text" in str(exc)
                message = (
                    "Request without a text chunk" if none else "Request contained more than one text chunk"
                )
                raise NotImplementedError(message) from None
            refused = [marker for marker in self.refuse_prompts if marker in text]
            if refused and not warmup:
                raise ValueError(f"request {m.id} cannot be built: its prompt holds {refused[0]!r}")
            prompt = self.tokenize(text, m.truncate, m.add_special_tokens)
            requests.append(self._request(m, text, prompt, next_block if warmup else None))
            if warmup:
                next_block += len(requests[-1].blocks)
        batch = SimBatch(message.id, requests, self.profile.block_size, padded=not self.flash)
        if batch.padded and requests:  # CausalLM.from_pb's accounting
            batch.padded_max_tokens = len(batch) * (
                batch.max_input_length + sum(r.max_new_tokens for r in requests)
            )
        return batch

    def _request(self, m: pb.Request, text: str, prompt: list[int], first_block: int | None) -> SimRequest:
        if not self.flash:
            return request_from_pb(m, prompt, text, None, len(prompt))
        if m.cache_len > len(prompt):
            raise AssertionError(f"Prefix {m.cache_len} vs input {len(prompt)}")
        if m.cache_len == len(prompt):
            raise AssertionError("unreachable")
        chunk = len(prompt) - m.cache_len
        if m.HasField("chunk_len"):
            if m.chunk_len > chunk:
                raise AssertionError("Rust and Python tokenizers are not aligned")
            if m.chunk_len < chunk:
                assert self.speculate == 0 and self.profile.supports_chunking and m.chunk_len > 0
            chunk = m.chunk_len
        slots: list[int] = list(m.slots)
        if not m.blocks:  # TGI places a request without blocks itself (Warmup): blocks from 0, per call
            bs = self.profile.block_size
            count = math.ceil((len(prompt) + m.stopping_parameters.max_new_tokens - 1 + self.speculate) / bs)
            start = first_block or 0
            blocks = list(range(start, start + count))
            slots = [b * bs + i for b in blocks for i in range(bs)]
            m = _with_blocks(m, blocks, slots)
        request = request_from_pb(m, prompt, text, slots, chunk)
        if first_block is None and request.cache_len:
            self.ledger.check_prefix(request.id, slots, request.hashes, request.cache_len)
        return request

    # -- a forward -------------------------------------------------------------------------------------------
    def _generate(self, batch: SimBatch, response_cls, concatenated: bool = False) -> Step:
        """One forward of every request of `batch`, stopped or not; TGI's generate_token."""
        speculate = self.speculate
        prefilling = [r for r in batch.requests if r.prefilling]
        prompt_tokens = sum(r.chunk for r in prefilling)
        decoding = len(batch) - len(prefilling)
        forward_tokens = prompt_tokens + decoding * (1 + speculate)
        budget = self.max_prefill_tokens
        # NOTE: TGI's router rounds prefill budgets up to whole blocks and its shard gives every prompt being
        # chunked a token at least: forwards that exceed Warmup's by that much are TGI's own (and fit its 10%
        # wiggle room); anything larger was never profiled.
        slack = self.profile.block_size - 1 + max(len(prefilling) - 1, 0)
        if self.flash and budget is not None and forward_tokens > budget + slack:
            self._release(batch.requests)  # the batch is lost with the shard
            raise RuntimeError(
                f"CUDA out of memory (strict shard: a forward of {forward_tokens} tokens; Warmup profiled "
                f"max_prefill_tokens={budget}, which sized the KV cache)"
            )
        context = sum(r.cache_len for r in batch.requests)
        generations, all_stopped = [], True
        for r in batch.requests:
            generation, stopped = self._advance(r)
            all_stopped = all_stopped and stopped
            if generation is not None:
                generations.append(generation)
        if prefilling and self.profile.supports_chunking:
            self._schedule_chunks(batch)
        duration = self.profile.forward_ms(prompt_tokens, decoding, context)
        ns = int(duration * 1e6)
        response = response_cls(generations=generations, forward_ns=ns, decode_ns=0, total_ns=ns)
        if concatenated:
            response.concat_ns = 0
        if all_stopped:
            self._release(batch.requests)  # TGI drops the batch: it is not cached
        else:
            self.cache[batch.id] = batch
            response.batch.CopyFrom(batch.to_pb(speculate))
        return Step(response, duration)

    def _advance(self, r: SimRequest) -> tuple[pb.Generation | None, bool]:
        """Compute one forward of `r`: write its KV, return its Generation (None mid-prompt) and whether it
        stopped in this step."""
        if r.stopped:
            if self.skip_stopped:
                return None, True
            r.steps_after_stop += 1
        if r.prefilling:
            for position in range(r.cache_len, r.cache_len + r.chunk):
                self._write(r, position, r.hashes[position])
            r.cache_len += r.chunk
            if r.prefilling:
                return None, False  # TGI: no Generation while the prompt is being chunked
            r.kv_hash = r.hashes[-1]
            return self._emit(r, 1)  # a prefill is never speculative
        fed = tokens.extend_hash(r.kv_hash, r.generated[-1])
        self._write(r, r.cache_len, fed)
        for offset in range(1, 1 + self.speculate):  # speculated tokens: KV written, kept only if accepted
            self._write(r, r.cache_len + offset, tokens.extend_hash(fed, -offset))
        count = tokens.accepted(r.key, len(r.generated), self.seed, self.speculate, self.profile.accept_rate)
        r.cache_len += count
        before = len(r.generated)
        generation, stopped = self._emit(r, count)
        h = fed
        for token in r.generated[before : before + count - 1]:  # accepted guesses were fed too
            h = tokens.extend_hash(h, token)
        r.kv_hash = h
        return generation, stopped

    def _write(self, r: SimRequest, position: int, content: int) -> None:
        if r.slots is None or r.id == LIVENESS_ID:
            return  # padded: KV tensors grow with the batch; liveness: TGI's reserved block 0
        self.ledger.write(r.id, r.slots, position, content)

    def _emit(self, r: SimRequest, count: int) -> tuple[pb.Generation, bool]:
        ids, texts, special, stopped_now = [], [], [], None
        for _ in range(count):
            g = len(r.generated) + 1
            eos = not r.ignore_eos and tokens.is_eos(r.key, g, self.seed, self.eos_rate)
            token = self.eos_token_id if eos else tokens.token_id(g)
            text = self.eos_text if eos else tokens.token_text(r.key, g)
            r.generated.append(token)
            if not eos:
                r.text += text
            ids.append(token)
            texts.append(text)
            special.append(eos)
            reason = _stop_reason(r, g, eos)
            if reason is not None:
                stopped_now = reason
                break  # TGI cuts the step's tokens at the stop
        message = pb.Tokens(ids=ids, logprobs=[-1.0] * len(ids), texts=texts, is_special=special)
        prefill = self._prefill_tokens(r) if len(r.generated) == len(ids) else None
        top = [_top_tokens(r.top_n_tokens, i) for i in ids] if r.top_n_tokens else None
        text = None
        if stopped_now is not None:
            r.stopped = True
            text = generated_text_message(r.text, len(r.generated), stopped_now, r.seed)
        return generation_message(r.id, message, prefill, top, text), stopped_now is not None

    def _prefill_tokens(self, r: SimRequest) -> pb.Tokens | None:
        if not r.prefill_logprobs or (self.flash and not self.request_logprobs):
            return None
        logprobs = [math.nan] * (r.cache_len if self.flash and r.cache_len else 1)
        logprobs = (logprobs + [-1.0] * r.prompt_len)[: r.prompt_len]
        return tokens_message(r.prompt, logprobs, [""] * r.prompt_len, None)

    def _schedule_chunks(self, batch: SimBatch) -> None:
        """TGI's continuation: the shared budget, handed out from the last request back, 1 token at least."""
        assert self.max_prefill_tokens is not None, "unsupported operand: Warmup never ran"
        budget = self.max_prefill_tokens - (len(batch) - 1)
        for r in reversed(batch.requests):
            if r.prefilling:
                r.chunk = max(min(r.prompt_len - r.cache_len, budget), 1)
                budget -= r.chunk


def _stop_reason(r: SimRequest, g: int, eos: bool) -> int | None:
    if g >= r.max_new_tokens:
        return pb.FINISH_REASON_LENGTH
    if eos:
        return pb.FINISH_REASON_EOS_TOKEN
    if any(r.text.endswith(s) for s in r.stop_sequences if s):
        return pb.FINISH_REASON_STOP_SEQUENCE
    return None


def _top_tokens(n: int, chosen: int) -> pb.Tokens:
    ids = [chosen] + [tokens.TOKEN_ID_BASE - 1 - i for i in range(n - 1)]
    return pb.Tokens(ids=ids, logprobs=[-1.0 - i for i in range(n)], texts=[""] * n, is_special=[False] * n)


def _with_blocks(m: pb.Request, blocks: list[int], slots: list[int]) -> pb.Request:
    placed = pb.Request()
    placed.CopyFrom(m)
    placed.blocks[:] = blocks
    placed.slots[:] = slots
    return placed
