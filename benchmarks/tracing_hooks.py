"""What tracing costs the router per decode step, in-process: the scheduler's hooks for one steady decode
step of a batch, with tracing off (the no-op tracer) and on (spans encoded to OTLP protobuf, as the gRPC
exporter does, then dropped).

    .venv/bin/python -m benchmarks.tracing_hooks [--steps 2000] [--batch 1 8 32 128] [--pace-ms 2]

Prints, per batch size: event-loop time per step (what delays the next shard call) and process CPU time per
step (including the export thread's encoding, which competes for the GIL). With tracing off, the CPU column
is the sleep loop's own cost (the baseline).
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tgi_async.client.types import CachedBatch, Generation, StepResult, StepTimings
from tgi_async.scheduler.admission import Admission, AdmissionPlan, Budget
from tgi_async.scheduler.blocks import BlockAllocator
from tgi_async.scheduler.decode_plan import DecodePlan
from tgi_async.scheduler.entry import Entry
from tgi_async.scheduler.request import GenerateRequest, SamplingParameters, StoppingParameters, Token
from tgi_async.telemetry import scheduler as hooks
from tgi_async.telemetry import setup


class _EncodeAndDrop(SpanExporter):
    """Does the exporter's CPU work (protobuf encoding) without a network."""

    def export(self, spans):
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


class _State:
    def __init__(self) -> None:
        self.waiting: list[Entry] = []
        self.running: dict[int, Entry] = {}
        self.allocator = BlockAllocator(1 << 20, 16)


def _fill(tracer: hooks.SchedulerTracer, state: _State, batch: int) -> CachedBatch:
    """`batch` requests queued, admitted and prefilled: the steady state of a decode batch."""
    request = GenerateRequest("x", 32, SamplingParameters(), StoppingParameters(max_new_tokens=10**6))
    for i in range(batch):
        entry = Entry(id=i, request=request)
        state.waiting.append(entry)
        tracer.queued(entry)
    plan = AdmissionPlan(tuple(Admission(i, None, None) for i in range(batch)), (), None, 32 * batch, 0, 1)
    tracer.admission(plan, Budget(4096, 1 << 20), 0)
    for entry in state.waiting:
        state.running[entry.id] = entry
    state.waiting.clear()
    return CachedBatch(0, tuple(range(batch)), batch, 64 * batch, batch)


def _result(cached: CachedBatch) -> StepResult:
    token = Token(1, "a", -0.5, False)
    generations = tuple(Generation(i, (token,), None, ((),), None) for i in cached.request_ids)
    return StepResult(generations, cached, StepTimings(1_000_000, 100_000, 1_200_000, None))


def measure(batch: int, steps: int, pace_s: float) -> tuple[float, float]:
    """(event-loop µs, process CPU µs) per decode step; steps are `pace_s` apart, like shard steps."""
    state = _State()
    tracer = hooks.scheduler_tracer(state)
    cached = _fill(tracer, state, batch)
    result = _result(cached)
    plan = DecodePlan("decode")
    setup.force_flush()
    loop = 0.0
    cpu0 = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        tracer.decode_plan(plan, 1)
        step = tracer.step("decode", None, (cached,))
        with step.context():
            pass
        step.done(result)
        loop += time.perf_counter() - start
        time.sleep(pace_s)  # the shard computes; the export thread encodes meanwhile
    setup.force_flush()
    cpu = time.process_time() - cpu0
    return loop / steps * 1e6, cpu / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--pace-ms", type=float, default=2.0, help="time between steps (a shard step)")
    args = parser.parse_args()
    pace = args.pace_ms / 1000
    rows = {b: [measure(b, args.steps, pace)] for b in args.batch}
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    for exporter in ("otlp", "file"):
        if exporter == "otlp":  # the OTLP/gRPC exporter's CPU work: encoding (the network part is C)
            setup.setup_tracing("bench", file_path="/dev/null")
            assert setup._provider is not None
            setup._provider._active_span_processor._span_processors = ()  # drop the file exporter
            setup._provider.add_span_processor(BatchSpanProcessor(_EncodeAndDrop()))
        else:
            setup.setup_tracing("bench", file_path="/dev/null")
        for b in args.batch:
            rows[b].append(measure(b, args.steps, pace))
        setup.shutdown_tracing()
    print(f"per decode step, {args.pace_ms} ms apart: event-loop µs / process CPU µs (incl. export thread)")
    print("batch   tracing off        on, OTLP/gRPC      on, --otlp-file")
    for b, ((l0, c0), (l1, c1), (l2, c2)) in rows.items():
        print(f"{b:5d}  {l0:6.2f} / {c0:5.1f}    {l1:6.1f} / {c1:6.1f}    {l2:6.1f} / {c2:6.1f}")


if __name__ == "__main__":
    main()
