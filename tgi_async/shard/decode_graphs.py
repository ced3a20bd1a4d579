"""Decode forwards replayed as CUDA graphs: one graph per (batch bucket, context bucket), captured on first
use, all graphs drawing from one memory pool.

An eager forward of an 8B Llama launches ~1,800 kernels per decode step; on an H200 the host needs ~50 ms to
launch them and the GPU ~9 ms to run them (docs/benchmarks.md), so the GPU idles 83 % of the time whatever the
pipeline around it does. A graph launches them in one call. Its shapes are fixed, so a step's B rows are
padded to a batch bucket (padding rows read and write only the cache's scratch slot; their tokens are never
read) and its keys to a context bucket, a power of two (columns past a row's position are masked). The
step's inputs are copied into the graph's buffers on the compute stream, the graph replays, and the engine
samples from its logits buffer right after, on the same stream, outside the graph (as vLLM does): every
sampler works unchanged (seeded generators, penalties, grammars, top-n), and the buffer is read before the
next replay.

Steps whose every row is a decode take this path; prompt chunks run eagerly. On CPU the same buffers run
eagerly (no capture), so tests check on CPU that padding and buckets change no answer. A new shape is
captured when first used (a stall of a few forwards; power-of-two context buckets keep them few), on one
capture stream of its own; a capture that fails turns graphs off for good (one error in the log), since a
failed capture can leave the allocator's bookkeeping of it half open. NOTE: the capture itself has run on no
GPU yet (benchmarks/gpu_overlap.py --cuda-graphs measures it).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from tgi_async.shard import attention
from tgi_async.shard.step_inputs import PreparedStep

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
MIN_CONTEXT = 256  # keys per row are padded to the next power of two, at least this
NO_POSITION = torch.iinfo(torch.int64).max  # a padded key column's position: after every query, so masked
# NOTE: a graph's pool holds its largest intermediate, one layer's gathered keys and values (rows x keys x
# kv heads x head size each); shapes past this many row-keys run eagerly (8B shape: 2 x 2 GiB at 2^20).
MAX_GRAPH_KEYS = 1 << 20


@dataclass(frozen=True, slots=True)
class _Buffers:
    """A graph's inputs and outputs: fixed tensors the captured kernels read and write."""

    input_ids: torch.Tensor  # [B] long
    positions: torch.Tensor  # [B] long: each row's position (its cache length)
    slot_table: torch.Tensor  # [B, K] long: each row's slots, the scratch slot past them
    logits: torch.Tensor  # [B, vocab] in the model's dtype


class DecodeGraphs:
    """Runs the decode forwards of `engine` with static shapes; captures CUDA graphs on CUDA."""

    def __init__(self, engine, min_context: int = MIN_CONTEXT, max_keys: int = MAX_GRAPH_KEYS):
        self.engine = engine
        self.min_context, self.max_keys = min_context, max_keys
        self.capture = engine.device.type == "cuda"
        self.enabled = True  # False once a capture failed
        # NOTE: one stream for every warmup and capture: torch hands out streams round-robin from a small
        # pool, so a new one per capture could alias the pipeline's H2D stream, which another thread uses.
        self._stream = torch.cuda.Stream(engine.device) if self.capture else None
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph | None] = {}  # None: capture failed
        self._pool = None
        self.steps = 0  # steps run here (graphs replayed, or their buffers run eagerly on CPU)
        self.vocab_size = engine.model.get_output_embeddings().out_features

    def shape(self, prepared: PreparedStep) -> tuple[int, int] | None:
        """(batch bucket, keys per row) of a step a graph can run: every row a decode (one token, sampled),
        within the buckets and MAX_GRAPH_KEYS; None for any other step."""
        if not (
            self.enabled
            and len(prepared.producing) == len(prepared.rows) <= BATCH_BUCKETS[-1]
            and prepared.prompt is None
            and all(row.chunk_len == 1 for row in prepared.rows)
        ):
            return None
        batch_bucket = next(size for size in BATCH_BUCKETS if size >= len(prepared.rows))
        longest = max(row.cache_len for row in prepared.rows) + 1
        context = max(self.min_context, 1 << (longest - 1).bit_length())
        return (batch_bucket, context) if batch_bucket * context <= self.max_keys else None

    def run(self, prepared: PreparedStep, input_ids: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
        """The logits `[B, vocab]` of a step of shape `key`: a view of the graph's buffer, read before the
        next run (compute stream)."""
        rows = len(prepared.rows)
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = self._buffers[key] = self._allocate(*key)
        self._fill(buffers, prepared, input_ids)
        graph = self._graphs.get(key, False)
        if graph is False:
            graph = self._graphs[key] = self._capture(buffers) if self.capture else None
        if graph is None:
            self._forward(buffers)
        else:
            graph.replay()
        self.steps += 1
        return buffers.logits[:rows]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(batch bucket, keys per row) of every shape used so far."""
        return sorted(self._buffers)

    def _allocate(self, batch_bucket: int, context: int) -> _Buffers:
        device = self.engine.device
        return _Buffers(
            input_ids=torch.zeros(batch_bucket, dtype=torch.long, device=device),
            positions=torch.zeros(batch_bucket, dtype=torch.long, device=device),
            slot_table=torch.full(
                (batch_bucket, context), self.engine.cache.scratch_slot, dtype=torch.long, device=device
            ),
            logits=torch.zeros(batch_bucket, self.vocab_size, dtype=self.engine.dtype, device=device),
        )

    def _fill(self, buffers: _Buffers, prepared: PreparedStep, input_ids: torch.Tensor) -> None:
        """Copy the step's rows into the buffers; padding rows use the scratch slot, at position 0."""
        rows, scratch, table = len(prepared.rows), self.engine.cache.scratch_slot, prepared.slot_table
        width = min(table.shape[1], buffers.slot_table.shape[1])
        buffers.slot_table.fill_(scratch)
        buffers.slot_table[:rows, :width].copy_(table[:, :width])
        buffers.input_ids.zero_()
        buffers.input_ids[:rows].copy_(input_ids)
        buffers.positions.zero_()
        buffers.positions[:rows].copy_(prepared.positions)

    def _forward(self, buffers: _Buffers) -> None:
        """One decode forward over the buffers (what a graph captures): every row's logits."""
        engine, table, positions = self.engine, buffers.slot_table, buffers.positions
        columns = torch.arange(table.shape[1], device=table.device)
        layout = attention.AttentionLayout(
            write_slots=table.gather(1, positions[:, None])[:, 0],
            key_slots=table,
            query_positions=positions[:, None],
            key_positions=torch.where(columns[None, :] <= positions[:, None], columns[None, :], NO_POSITION),
            key_groups=None,
            query_groups=None,
            query_index=None,
            output_index=None,
        )
        output = engine.model(
            input_ids=buffers.input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            logits_to_keep=0,
            **{attention.STEP_KWARG: attention.PagedStep(engine.cache, layout)},
        )
        buffers.logits.copy_(output.logits[0])

    def _capture(self, buffers: _Buffers) -> torch.cuda.CUDAGraph | None:
        """Warm up on the capture stream (library handles and workspaces, autotuning), then capture into the
        shared pool. On failure: the compute stream restored, graphs off."""
        device, shape = self.engine.device, tuple(buffers.slot_table.shape)
        compute, stream = torch.cuda.current_stream(device), self._stream
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            stream.wait_stream(compute)
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(buffers)
            compute.wait_stream(stream)
            # NOTE: thread_local: the model thread keeps building the next step's inputs meanwhile
            with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
                self._forward(buffers)
        except Exception as exc:
            torch.cuda.set_stream(compute)  # the graph context leaves the capture stream current on failure
            compute.wait_stream(stream)
            end_pool = getattr(torch._C, "_cuda_endAllocateToPool", None)
            if end_pool is not None:
                with contextlib.suppress(RuntimeError):  # already ended when the capture itself ended
                    end_pool(device.index, self._pool)
            self.enabled = False
            logger.error(
                "decode graph capture failed: CUDA graphs off", extra={"shape": shape, "error": str(exc)}
            )
            return None
        logger.info("decode graph captured", extra={"shape": shape})
        return graph
