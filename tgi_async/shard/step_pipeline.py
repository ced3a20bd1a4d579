"""The bundled shard's step pipeline: the forward of step N+1 runs while the host finishes step N.

Forwards and sampling run on ONE compute thread, in submission order (torch releases the GIL in its
kernels); the model thread builds inputs, waits for a step's results once, and turns them into messages.
With overlap on, right after submitting a step the pipeline submits a speculative decode of every row that
may continue, its input token carried from the step's sampled ids on the device (no host round trip). So
step N+1 computes while the host samples to lists, stops, detokenizes and answers step N, and while the
router prepares its next call.

The router still drives the batches (TGI's gRPC contract). When it asks for a step, each row with a pending
speculative decode is *covered*: that forward is its step. Rows that finished meanwhile or were filtered
away are dropped from it and never reported; their speculative key/value write stayed in their own slots
(`_may_continue`). Rows not covered (new requests, prompt chunks, rows that could not speculate) run in a
fresh forward. A batch whose sampler reads host histories (penalties, watermark, grammars) is never
speculated: it runs one forward at a time.

Invariants (asserted): at most one speculative forward per request; a speculative forward is consumed only
at the cache length it was computed from, and a row's results are applied once.

On CUDA the same thread launches the forwards on a compute stream: inputs are built on an H2D stream and
ordered by an event, results are copied to pinned host memory on a D2H stream and the host waits on that
event, once per step. Every step owns its input and output tensors, kept alive until its copies land (also
when its results are dropped), so preparing step N+1 never overwrites what step N reads. The CUDA
path ran on an H200 (benchmarks/gpu_overlap.py: same tokens with overlap on and off). NOTE: eagerly, an 8B
model's forward there is bound by its ~1,800 kernel launches per step (docs/benchmarks.md): overlap hides the
host's work between forwards, not the launches; `--cuda-graphs` (tgi_async/shard/decode_graphs.py) replays
decode forwards as graphs, and has not run on a GPU yet.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from tgi_async.proto import pb
from tgi_async.shard.batch import RequestState, ShardBatch
from tgi_async.shard.step_inputs import PreparedStep, RowInput, StepHandle, StepOutput, prepare_step


@dataclass(frozen=True, slots=True)
class StepResult:
    generations: list[pb.Generation]
    forward_ns: int  # compute-thread time of the forwards whose tokens these are (sampling included)
    decode_ns: int  # host: waiting for results, stopping, detokenization, messages


class _CudaStreams:
    """H2D, compute and D2H streams of one device (CUDA only)."""

    def __init__(self, device: torch.device):
        self.h2d = torch.cuda.Stream(device)
        self.compute = torch.cuda.Stream(device)
        self.d2h = torch.cuda.Stream(device)

    def copy_to_host(self, output: StepOutput) -> StepOutput:
        """Queue the copies the host reads (after the compute stream's work) and an event for them."""
        self.d2h.wait_stream(self.compute)
        tensors = [output.next_ids, output.chosen]
        if output.prompt_values is not None:
            tensors.append(output.prompt_values)
        with torch.cuda.stream(self.d2h):
            host = []
            for tensor in tensors:
                tensor.record_stream(self.d2h)
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.append(pinned.copy_(tensor, non_blocking=True))
            copied = torch.cuda.Event()
            copied.record(self.d2h)
        return dataclasses.replace(output, host=tuple(host), copied=copied)


class StepPipeline:
    """Steps batches for the server's model thread; see the module docstring."""

    def __init__(self, engine, overlap: bool):
        self.engine = engine
        self.overlap = overlap
        # NOTE: intra-op thread counts are per thread in OpenMP: the compute thread takes the engine's.
        self._compute = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="shard-compute",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._streams = _CudaStreams(engine.device) if engine.device.type == "cuda" else None
        self._pending: dict[int, tuple[StepHandle, int]] = {}  # id(request): (speculative step, its row)
        # CUDA: steps whose kernels may still run, kept alive (their inputs not freed and reused) until their
        # copies land; owned by the compute thread
        self._launched: deque[tuple[PreparedStep, StepOutput]] = deque()

    @property
    def pending(self) -> int:
        """Requests with a speculative forward in flight."""
        return len(self._pending)

    def step(self, batch: ShardBatch) -> StepResult:
        """Advance every unfinished request of `batch` by one forward; its generations, in batch order."""
        try:
            return self._step(batch)
        except BaseException:
            self._pending.clear()  # a failed forward poisons the steps carrying its tokens
            raise

    def retain(self, live: Iterable[RequestState]) -> None:
        """Forget speculative forwards of requests no longer in any cached batch (filtered, cleared)."""
        keep = {id(r) for r in live}
        self._pending = {key: entry for key, entry in self._pending.items() if key in keep}

    def settle(self) -> None:
        """Return once every submitted forward has run (the compute thread runs them in order)."""
        self._compute.submit(int).result()

    def close(self) -> None:
        self._compute.shutdown(wait=False, cancel_futures=True)

    # -- one step -------------------------------------------------------------------------------------------

    def _step(self, batch: ShardBatch) -> StepResult:
        used: dict[StepHandle, set[int]] = {}  # speculative steps consumed here: their rows we report
        sources: list[tuple[int, RequestState, StepHandle | None, int]] = []  # (batch row, request, step, j)
        fresh_rows: list[RowInput] = []
        for i, r in enumerate(batch.requests):
            entry = self._pending.pop(id(r), None)
            if r.finished:
                continue  # a speculative forward of a finished request is dropped unreported
            if entry is None:
                sources.append((i, r, None, len(fresh_rows)))
                fresh_rows.append(RowInput(r, i, r.cache_len, r.chunk_len))
                continue
            handle, j = entry
            row = handle.prepared.rows[j]
            if row.request is not r or row.cache_len != r.cache_len or r.chunk_len != 1:
                raise AssertionError(
                    f"request {r.id}: speculative step from {row.cache_len}, the request is at {r.cache_len}"
                )
            used.setdefault(handle, set()).add(j)
            sources.append((i, r, handle, j))
        fresh = self._submit(self._prepare(batch, fresh_rows)) if fresh_rows else None
        sources = [(i, r, handle or fresh, j) for i, r, handle, j in sources]
        if self.overlap:
            self._speculate(batch, sources)

        host_started = time.perf_counter_ns()
        forward_ns, generations = 0, {}
        consumed = [(handle, rows) for handle, rows in used.items()]
        if fresh is not None:
            consumed.append((fresh, set(range(len(fresh_rows)))))
        for handle, rows in consumed:
            output = handle.output()
            forward_ns += output.forward_ns
            dropped = set(range(len(handle.prepared.rows))) - rows
            generations.update(self.engine.finish(handle.prepared, output, dropped))
        self.engine.schedule_chunks(batch)
        ordered = [generations[id(r)] for r in batch.requests if id(r) in generations]
        return StepResult(ordered, forward_ns, time.perf_counter_ns() - host_started)

    def _speculate(self, batch: ShardBatch, sources: Sequence[tuple[int, RequestState, StepHandle, int]]):
        """Submit the next decode of every row that may continue, its token carried from this step."""
        if batch.sampler.reads_history:
            return
        rows: list[RowInput] = []
        sampled: dict[StepHandle, dict[int, int]] = {}  # per source step: its row -> index of its sampled ids
        for i, r, handle, j in sources:
            index = sampled.get(handle)
            if index is None:
                index = sampled[handle] = {row: k for k, row in enumerate(handle.prepared.producing)}
            source = handle.prepared.rows[j]
            if j in index and _may_continue(r, source):
                rows.append(RowInput(r, i, source.cache_len + source.chunk_len, 1, (handle, index[j])))
        if not rows:
            return
        speculative = self._submit(self._prepare(batch, rows))
        for j, row in enumerate(rows):
            if id(row.request) in self._pending:
                raise AssertionError(f"request {row.request.id}: two speculative steps in flight")
            self._pending[id(row.request)] = (speculative, j)

    # -- the compute thread ---------------------------------------------------------------------------------

    def _prepare(self, batch: ShardBatch, rows: Sequence[RowInput]) -> PreparedStep:
        dense_ok = self.engine.dense_decode
        if self._streams is None:
            return prepare_step(batch, rows, dense_ok)
        self._streams.h2d.wait_stream(torch.cuda.current_stream(self.engine.device))
        with torch.cuda.stream(self._streams.h2d):
            prepared = prepare_step(batch, rows, dense_ok)
            ready = torch.cuda.Event()
            ready.record(self._streams.h2d)
        return dataclasses.replace(prepared, ready=ready)

    def _submit(self, prepared: PreparedStep) -> StepHandle:
        return StepHandle(prepared, self._compute.submit(self._run, prepared))

    def _run(self, prepared: PreparedStep) -> StepOutput:
        """One forward, on the compute thread (inference mode is per thread)."""
        with torch.inference_mode():
            if self._streams is None:
                output = self.engine.execute(prepared)
            else:
                with torch.cuda.stream(self._streams.compute):
                    self._streams.compute.wait_event(prepared.ready)
                    try:
                        output = self._streams.copy_to_host(self.engine.execute(prepared))
                    except BaseException:
                        # the kernels it queued may still read its inputs, which are freed once it fails
                        self._streams.compute.synchronize()
                        raise
                while self._launched and self._launched[0][1].copied.query():
                    self._launched.popleft()
                self._launched.append((prepared, output))
        return output


def _may_continue(r: RequestState, source: RowInput) -> bool:
    """Whether `r` may still need a step after `source`: not at its token limit after it, and the router
    gave it a slot for the carried token.

    NOTE: a length stop is known before the token is sampled, so a speculative forward only ever writes
    within the slots a request was given (prompt + max_new_tokens - 1): a request that then stops on EOS or
    a stop sequence has its last token's keys/values written in its own next slot, and nowhere else.
    """
    return (
        r.stopping.current_tokens + 1 < r.stopping.max_new_tokens
        and source.cache_len + source.chunk_len < len(r.slots)
    )
