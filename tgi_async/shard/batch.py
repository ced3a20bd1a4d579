"""A cached batch of the bundled shard: per-request progress through the KV cache, and batch operations.

Every request advances the same way: the next forward computes `all_ids[cache_len : cache_len + chunk_len]`
at those positions, writing their keys/values into `slots[cache_len : cache_len + chunk_len]`. While the
prompt is not fully cached, `chunk_len` is a prompt chunk; once it is, each step feeds the last generated
token (`chunk_len == 1`) and samples the next. A finished request keeps its place (the router filters it
out) but is never computed again (`chunk_len == 0`).

Constructors and operations validate everything first and raise `BatchError` without touching any state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tgi_async.proto import pb
from tgi_async.shard.decode_context import DecodeContext
from tgi_async.shard.detokenize import IncrementalDetokenizer
from tgi_async.shard.grammar import RowError, row_grammars
from tgi_async.shard.kv_cache import BLOCK_SIZE
from tgi_async.shard.prompt import BatchError, prompt_ids
from tgi_async.shard.sampling import BatchSampler, row_parameters
from tgi_async.shard.stopping import StoppingCriteria

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a new batch is checked against."""

    num_slots: int  # slots in the KV cache (valid slots are 0..num_slots-1)
    eos_token_ids: frozenset[int]
    device: torch.device


@dataclass(slots=True)
class RequestState:
    """One request's progress; mutated only by the engine's step."""

    id: int
    prompt_len: int
    all_ids: list[int]  # prompt, then generated tokens
    slots: list[int]  # KV slot of each position, router-assigned
    num_blocks: int  # blocks owned (CachedBatch.max_tokens accounting)
    cache_len: int  # positions whose keys/values are in the cache
    chunk_len: int  # positions the next forward computes (0 once finished)
    prefill_logprobs: bool
    top_n_tokens: int
    stopping: StoppingCriteria
    detokenizer: IncrementalDetokenizer
    # prefill tokens gathered over prompt chunks, sent with the first generated token: (ids, logprobs, texts)
    prefill_tokens: tuple[list[int], list[float], list[str]] | None = None
    finished: bool = False

    @property
    def prefilling(self) -> bool:
        """True until the whole prompt is cached (no token generated yet)."""
        return self.cache_len < self.prompt_len

    @property
    def max_tokens(self) -> int:
        return self.num_blocks * BLOCK_SIZE if self.num_blocks else len(self.slots)


@dataclass(slots=True)
class ShardBatch:
    """Requests in batch order, their sampler rows, and a padded `[B, max_slots]` slot table on the device."""

    id: int
    requests: list[RequestState]
    sampler: BatchSampler
    slot_table: torch.Tensor
    _index: dict[int, int] = field(default_factory=dict)
    decode_context: DecodeContext | None = None  # the engine's, kept between decode steps (CPU)

    def __post_init__(self) -> None:
        self._index = {r.id: i for i, r in enumerate(self.requests)}

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def all_finished(self) -> bool:
        return all(r.finished for r in self.requests)

    def to_cached_batch(self) -> pb.CachedBatch:
        return pb.CachedBatch(
            id=self.id,
            request_ids=[r.id for r in self.requests],
            size=len(self.requests),
            max_tokens=sum(r.max_tokens for r in self.requests),
            current_tokens=sum(r.chunk_len for r in self.requests),
        )

    def check_next_step(self) -> None:
        """BatchError naming the first unfinished request whose next forward needs a slot it was not given."""
        for r in self.requests:
            if not r.finished and r.cache_len + r.chunk_len > len(r.slots):
                raise BatchError(
                    f"request {r.id}: the next step needs {r.cache_len + r.chunk_len} slots, it has "
                    f"{len(r.slots)} (allocate prompt + max_new_tokens - 1 slots)"
                )

    def filter(self, request_ids: Sequence[int]) -> ShardBatch:
        """A batch of the given requests, in that order (the cache itself is untouched)."""
        if not request_ids:
            raise BatchError(f"FilterBatch on batch {self.id} with no request ids: use ClearCache instead")
        unknown = [i for i in request_ids if i not in self._index]
        if unknown:
            raise BatchError(f"batch {self.id} has no requests {unknown}")
        if len(set(request_ids)) != len(request_ids):
            raise BatchError(f"FilterBatch on batch {self.id}: duplicate request ids")
        rows = [self._index[i] for i in request_ids]
        if rows == list(range(len(self.requests))):
            return self
        index = torch.tensor(rows, device=self.slot_table.device)
        longest = max(len(self.requests[i].slots) for i in rows)
        return ShardBatch(
            id=self.id,
            requests=[self.requests[i] for i in rows],
            sampler=self.sampler.filter(rows),
            slot_table=self.slot_table.index_select(0, index)[:, : max(longest, 1)],
        )

    @classmethod
    def concatenate(cls, batches: Sequence[ShardBatch]) -> ShardBatch:
        """One batch with the first batch's id; request ids must be unique across the batches."""
        seen: set[int] = set()
        for batch in batches:
            clash = seen.intersection(batch._index)
            if clash:
                raise BatchError(f"request ids {sorted(clash)} appear in more than one batch")
            seen.update(batch._index)
        if len(batches) == 1:
            return batches[0]
        width = max(b.slot_table.shape[1] for b in batches)
        tables = [torch.nn.functional.pad(b.slot_table, (0, width - b.slot_table.shape[1])) for b in batches]
        return cls(
            id=batches[0].id,
            requests=[r for b in batches for r in b.requests],
            sampler=BatchSampler.concatenate([b.sampler for b in batches]),
            slot_table=torch.cat(tables),
        )

    @classmethod
    def from_pb(cls, message: pb.Batch, tokenizer, limits: Limits, place: bool = False) -> ShardBatch:
        """Tokenize and validate a new batch. `place`: give requests without slots contiguous blocks from 0
        (warmup only, as TGI does); otherwise every request must come with enough in-range slots."""
        if not message.requests:
            raise BatchError(f"batch {message.id} has no requests")
        if not place:
            ids = [r.id for r in message.requests]
            if len(set(ids)) != len(ids):
                raise BatchError(f"batch {message.id} has duplicate request ids")
        rows = []
        for request in message.requests:
            try:
                rows.append(row_parameters(request.parameters, tokenizer))
            except ValueError as exc:
                raise BatchError(f"request {request.id}: {exc}") from None
        requests, next_block = [], 0
        for request in message.requests:
            state = _request_state(request, tokenizer, limits, next_block if place else None)
            next_block += state.num_blocks
            requests.append(state)
        # NOTE: last: compiling a new grammar is the costly check (cached per grammar text).
        try:
            grammars = row_grammars([row.grammar for row in rows], tokenizer)
        except RowError as exc:
            raise BatchError(f"request {message.requests[exc.row].id}: {exc}") from None
        width = max(len(r.slots) for r in requests)
        table = torch.zeros(len(requests), width, dtype=torch.long)
        for i, r in enumerate(requests):
            table[i, : len(r.slots)] = torch.tensor(r.slots, dtype=torch.long)
        sampler = BatchSampler(rows, limits.device, grammars=grammars)
        return cls(id=message.id, requests=requests, sampler=sampler, slot_table=table.to(limits.device))


def _request_state(request: pb.Request, tokenizer, limits: Limits, first_block: int | None) -> RequestState:
    ids = prompt_ids(request, tokenizer)
    prompt_len = len(ids)
    cache_len = request.cache_len
    if cache_len >= prompt_len:
        raise BatchError(
            f"request {request.id}: cache_len {cache_len} leaves nothing to compute "
            f"(prompt: {prompt_len} tokens)"
        )
    chunk_len = prompt_len - cache_len
    if request.HasField("chunk_len"):
        if not 0 < request.chunk_len <= chunk_len:
            raise BatchError(
                f"request {request.id}: chunk_len {request.chunk_len} must be in 1..{chunk_len} "
                f"(prompt: {prompt_len} tokens, cache_len {cache_len})"
            )
        chunk_len = request.chunk_len
    try:
        stopping = StoppingCriteria.from_pb(request.stopping_parameters, set(limits.eos_token_ids))
    except ValueError as exc:
        raise BatchError(f"request {request.id}: {exc}") from None
    slots, num_blocks = list(request.slots), len(request.blocks)
    if first_block is not None and not slots:
        tokens = prompt_len + stopping.max_new_tokens - 1
        num_blocks = -(-tokens // BLOCK_SIZE)
        slots = list(range(first_block * BLOCK_SIZE, first_block * BLOCK_SIZE + tokens))
    if not slots:
        raise BatchError(f"request {request.id} has no slots: the router must allocate KV blocks")
    if len(slots) < prompt_len:
        raise BatchError(f"request {request.id}: {len(slots)} slots for a {prompt_len}-token prompt")
    if max(slots) >= limits.num_slots:
        raise BatchError(
            f"request {request.id}: slot {max(slots)} is out of range "
            f"(the cache has {limits.num_slots} slots)"
        )
    return RequestState(
        id=request.id,
        prompt_len=prompt_len,
        all_ids=ids,
        slots=slots,
        num_blocks=num_blocks,
        cache_len=cache_len,
        chunk_len=chunk_len,
        prefill_logprobs=request.prefill_logprobs,
        top_n_tokens=request.top_n_tokens,
        stopping=stopping,
        detokenizer=IncrementalDetokenizer(tokenizer, ids),
    )
