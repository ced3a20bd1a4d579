"""One forward's inputs, built on the host from plain request state, and its outputs as the device left them.

A step computes, per row, `all_ids[cache_len : cache_len + chunk_len]` at those positions. `prepare_step`
builds everything the forward needs from (request, cache_len, chunk_len) snapshots, so the inputs of step
N+1 can be built while step N still runs: its decode rows take their input token from step N's sampled ids
on the device (a `Carry`), never from the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from tgi_async.shard import attention
from tgi_async.shard.batch import RequestState, ShardBatch
from tgi_async.shard.sampling import BatchSampler


@dataclass(frozen=True, slots=True)
class RowInput:
    """A row of a step: its request, its place in the batch, and what the forward computes for it."""

    request: RequestState
    row: int  # index in the batch (its sampler row)
    cache_len: int  # positions already cached when this step runs
    chunk_len: int  # positions this step computes
    carry: tuple[StepHandle, int] | None = None  # (step, index of its sampled ids); None once in a step


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """Which kept logits rows score which prompt tokens (prompt logprobs of prefill chunks)."""

    rows: torch.Tensor  # [N] rows of the kept logits
    targets: torch.Tensor  # [N, 1] the prompt token each row predicts
    owners: tuple[tuple[int, int], ...]  # (row of the step, how many of the N values are its)


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """Host-built inputs of one forward; nothing in it changes once built (but the carried ids, which its
    one forward fills in)."""

    batch: ShardBatch  # whose decode context the forward uses
    rows: tuple[RowInput, ...]
    input_ids: torch.Tensor  # [T] long on the device; a carried row holds 0 until the forward fills it in
    # (the source step's output, the index of its sampled ids, their positions here). NOTE: the output's
    # future, not the step: a step holding the one before it would keep every step of a decode alive.
    carries: tuple[tuple[Future, torch.Tensor, torch.Tensor], ...]
    positions: torch.Tensor  # [T] long on the device
    slot_table: torch.Tensor  # [R, max slots] the rows' slots (the batch's table, or its rows in row order)
    layout: attention.AttentionLayout | attention.SplitLayout
    dense: bool  # decode-only CPU step: read the batch's dense decode context
    keep: torch.Tensor  # [K] packed positions whose logits are needed
    producing: tuple[int, ...]  # rows (indices of `rows`) that sample a token
    sample_index: torch.Tensor  # [P] row of the kept logits each producing row samples from
    sampler: BatchSampler | None  # the producing rows' chooser
    histories: tuple[list[int], ...] | None  # producing rows' ids, for a sampler that reads them
    grammar_masks: Future | None  # producing grammar rows' masks, computing since prepare_step
    top_n: tuple[int, ...]  # producing rows' top_n_tokens
    prompt: PromptLogprobs | None
    ready: torch.cuda.Event | None = None  # CUDA: the inputs are on the device


class StepHandle:
    """A submitted step: its inputs and the future of its `StepOutput` (kept alive until read)."""

    __slots__ = ("future", "prepared")

    def __init__(self, prepared: PreparedStep, future):
        self.prepared = prepared
        self.future = future

    def output(self) -> StepOutput:
        return self.future.result()


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What the forward left on the device (on CUDA, `host` copies land when `copied` fires)."""

    next_ids: torch.Tensor  # [P] long: each producing row's token (device; the next step may carry it)
    chosen: torch.Tensor  # [P] float: their logprobs
    logprobs: torch.Tensor | None  # [P, V] when a row asked for top-n tokens
    prompt_values: torch.Tensor | None  # prompt logprobs, in `PromptLogprobs.rows` order
    forward_ns: int  # time the compute thread spent on it
    host: tuple[torch.Tensor, ...] = ()  # CUDA: pinned host copies of (next_ids, chosen[, prompt_values])
    copied: torch.cuda.Event | None = None


def produces(r: RequestState, cache_len: int, chunk_len: int) -> bool:
    """Whether a forward of `r` over `[cache_len, cache_len + chunk_len)` samples a token (it reaches the end
    of the known tokens, or the token carried to it)."""
    return cache_len + chunk_len >= len(r.all_ids)


def prepare_step(batch: ShardBatch, rows: Sequence[RowInput], dense_ok: bool) -> PreparedStep:
    """The inputs of one forward over `rows` (their KV slots from the batch's slot table).

    `dense_ok`: the engine may keep a dense decode context (CPU, unquantized cache)."""
    device = batch.slot_table.device
    ids: list[int] = []
    positions: list[int] = []
    keep: list[int] = []  # packed positions whose logits are needed
    last_row: list[int] = []  # per row: its last row in `keep`
    carried: dict[StepHandle, tuple[list[int], list[int]]] = {}
    for row in rows:
        r, start, length = row.request, row.cache_len, row.chunk_len
        offset = len(ids)
        if row.carry is not None:
            handle, index = row.carry
            sources, targets = carried.setdefault(handle, ([], []))
            sources.append(index)
            targets.append(offset)
            ids.append(0)
        else:
            ids.extend(r.all_ids[start : start + length])
        positions.extend(range(start, start + length))
        if r.prefill_logprobs and start < r.prompt_len:
            keep.extend(range(offset, offset + length))
        elif produces(r, start, length):
            keep.append(offset + length - 1)
        last_row.append(len(keep) - 1)
    indices = [row.row for row in rows]
    table = batch.slot_table if indices == list(range(len(batch))) else batch.slot_table[indices]
    dense = dense_ok and all(row.chunk_len == 1 for row in rows)
    position_tensor = torch.tensor(positions, dtype=torch.long, device=device)
    layout = attention.build_layout(
        table,
        [row.cache_len for row in rows],
        [row.chunk_len for row in rows],
        position_tensor,
        packed=False if dense else None,  # the dense context is laid out per sequence
    )
    producing = tuple(j for j, row in enumerate(rows) if produces(row.request, row.cache_len, row.chunk_len))
    sampler = None
    if producing:
        sampler_rows = [rows[j].row for j in producing]
        whole = sampler_rows == list(range(len(batch)))
        sampler = batch.sampler if whole else batch.sampler.filter(sampler_rows)
    histories = None
    if sampler is not None and sampler.reads_history:
        if any(rows[j].carry is not None for j in producing):
            raise RuntimeError("a step that reads histories cannot take carried tokens")
        histories = tuple(rows[j].request.all_ids for j in producing)
    # NOTE: a grammar row's mask depends only on tokens already chosen (reads_history: no carried row is
    # one), so it is computed while the forward runs.
    grammar_masks = sampler.start_grammar_masks() if sampler is not None else None
    return PreparedStep(
        batch=batch,
        rows=tuple(dataclasses.replace(row, carry=None) if row.carry else row for row in rows),  # as carries
        # NOTE: built here, on the device (CUDA: the H2D stream): a copy from pageable memory in the forward
        # would make the compute thread wait for the device before launching the step.
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        carries=tuple(
            (handle.future, torch.tensor(s, device=device), torch.tensor(t, device=device))
            for handle, (s, t) in carried.items()
        ),
        positions=position_tensor,
        slot_table=table,
        layout=layout,
        dense=dense,
        keep=torch.tensor(keep or [0], dtype=torch.long, device=device),
        producing=producing,
        sample_index=torch.tensor([last_row[j] for j in producing], dtype=torch.long, device=device),
        sampler=sampler,
        histories=histories,
        grammar_masks=grammar_masks,
        top_n=tuple(rows[j].request.top_n_tokens for j in producing),
        prompt=_prompt_logprobs(rows, last_row, device),
    )


def _prompt_logprobs(rows: Sequence[RowInput], last_row: list[int], device) -> PromptLogprobs | None:
    """Which kept rows score which prompt tokens, for rows prefilling with prefill_logprobs."""
    kept, targets, owners = [], [], []
    for j, row in enumerate(rows):
        r = row.request
        if not (r.prefill_logprobs and row.cache_len < r.prompt_len):
            continue
        end = min(row.cache_len + row.chunk_len, r.prompt_len - 1)
        predicted = r.all_ids[row.cache_len + 1 : end + 1]
        first = last_row[j] - row.chunk_len + 1
        kept.extend(range(first, first + len(predicted)))
        targets.extend(predicted)
        owners.append((j, len(predicted)))
    if not owners:
        return None
    return PromptLogprobs(
        rows=torch.tensor(kept, dtype=torch.long, device=device),
        targets=torch.tensor(targets, dtype=torch.long, device=device)[:, None],
        owners=tuple(owners),
    )
