"""Prometheus metrics with TGI's exact names, labels, buckets and text rendering.

TGI's router records through the Rust `metrics` crate and renders with metrics-exporter-prometheus:
counters have NO `_total` suffix, histograms whose name ends in `duration` use 35 geometric buckets,
a few token-count histograms use buckets derived from the token limits, and any other distribution is a
summary with quantiles 0, 0.5, 0.9, 0.95, 0.99, 0.999, 1. A series appears in the output only once it has
been touched (first inc/set/observe), as in TGI. We render that format ourselves (prometheus_client would
append `_total` to counters), one registry per process: `REGISTRY`.

Who updates what:
  API layer (tgi_async/api/):
    REQUEST_COUNT, REQUEST_SUCCESS, REQUEST_FAILURE{err=validation|overloaded|incomplete|template},
    REQUEST_DURATION, REQUEST_VALIDATION_DURATION, REQUEST_QUEUE_DURATION, REQUEST_INFERENCE_DURATION,
    REQUEST_MEAN_TIME_PER_TOKEN_DURATION, REQUEST_GENERATED_TOKENS, REQUEST_INPUT_LENGTH,
    REQUEST_MAX_NEW_TOKENS.
  Scheduler (tgi_async/scheduler/), mirroring TGI's backends/v3 queue.rs and backend.rs:
    QUEUE_SIZE (requests waiting), BATCH_CURRENT_SIZE / BATCH_CURRENT_MAX_TOKENS (the running batch; 0 when
    idle), BATCH_NEXT_SIZE (size of each batch popped from the queue), BATCH_MAX_TOTAL_TOKENS (set once at
    start), BATCH_INFERENCE_COUNT / _SUCCESS / _FAILURE{method=prefill|decode} (per shard call),
    BATCH_INFERENCE_DURATION{method} (whole call incl. filtering), BATCH_FORWARD_DURATION{method} and
    BATCH_DECODE_DURATION{method} (shard-reported timings), BATCH_FILTER_DURATION{method} (sending
    generations to requests), BATCH_CONCAT{reason=backpressure|chunking|wait_exceeded},
    BATCH_CONCAT_DURATION{method}, REQUEST_FAILURE{err=generation|dropped}, REQUEST_SKIPPED_TOKENS.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal

SUMMARY_QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
SUMMARY_WINDOW_S = 60.0  # metrics-exporter-prometheus default: 3 buckets of 20 s


def rust_f64(value: float) -> str:
    """`value` as Rust's `Display` for f64 prints it: shortest round-trip digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def duration_buckets() -> tuple[float, ...]:
    """35 geometric bounds from 0.00015 s (x1.5 each), as TGI's router configures every `*duration`."""
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


def linear_buckets(limit: int, count: int = 100) -> tuple[float, ...]:
    """`count` bounds `limit / count * (i + 1)` (TGI's token-count buckets)."""
    return tuple((limit / count) * (i + 1) for i in range(count))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str | None = None, labelnames: tuple[str, ...] = ()):
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._series: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def _child(self, values: tuple[str, ...]):
        child = self._series.get(values)
        if child is None:
            with self._lock:
                child = self._series.setdefault(values, self._new_child())
        return child

    def labels(self, *values: str, **named: str):
        """The series for these label values (positional in `labelnames` order, or by name)."""
        if named:
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        return _Bound(self, tuple(str(v) for v in values))

    def _new_child(self):
        raise NotImplementedError

    def _label_text(self, values: tuple[str, ...], extra: str | None = None) -> str:
        parts = [f'{k}="{_escape(v)}"' for k, v in zip(self.labelnames, values, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self) -> str:
        if not self._series:
            return ""
        lines = [f"# HELP {self.name} {self.help}"] if self.help else []
        lines.append(f"# TYPE {self.name} {self.kind}")
        for values, child in list(self._series.items()):
            lines.extend(self._render_child(values, child))
        return "\n".join(lines) + "\n\n"

    def _render_child(self, values, child) -> list[str]:
        raise NotImplementedError

    # unlabeled shortcuts
    def inc(self, amount: float = 1) -> None:
        self._child(()).inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._child(()).dec(amount)

    def set(self, value: float) -> None:
        self._child(()).set(value)

    def observe(self, value: float) -> None:
        self._child(()).observe(value)

    def value(self) -> float:
        """The unlabeled series' value (counters and gauges; tests)."""
        return self._child(()).value

    def clear(self) -> None:
        """Forget every series (tests)."""
        with self._lock:
            self._series.clear()


class _Bound:
    __slots__ = ("_metric", "_values")

    def __init__(self, metric: _Metric, values: tuple[str, ...]):
        self._metric, self._values = metric, values

    def inc(self, amount: float = 1) -> None:
        self._metric._child(self._values).inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._metric._child(self._values).dec(amount)

    def set(self, value: float) -> None:
        self._metric._child(self._values).set(value)

    def observe(self, value: float) -> None:
        self._metric._child(self._values).observe(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Counter(_Metric):
    """A monotonically increasing integer (rendered as a u64, name unchanged)."""

    kind = "counter"

    def _new_child(self):
        return _Value()

    def _render_child(self, values, child) -> list[str]:
        return [f"{self.name}{self._label_text(values)} {int(child.value)}"]


class Gauge(_Metric):
    kind = "gauge"

    def _new_child(self):
        return _Value()

    def _render_child(self, values, child) -> list[str]:
        return [f"{self.name}{self._label_text(values)} {rust_f64(child.value)}"]


class _HistogramValue:
    """Observations per bucket (the first bound >= the value; none past the last): a binary search per
    observation, the cumulative `le` counts are summed when rendered."""

    __slots__ = ("bounds", "count", "counts", "lock", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = len(self.counts) if math.isnan(value) else bisect.bisect_left(self.bounds, value)
        with self.lock:
            if i < len(self.counts):
                self.counts[i] += 1
            self.count += 1
            self.sum += value

    def cumulative(self) -> list[int]:
        return list(itertools.accumulate(self.counts))


class Histogram(_Metric):
    """Cumulative buckets `le`, then `+Inf`, `_sum`, `_count` (metrics-exporter-prometheus layout)."""

    kind = "histogram"

    def __init__(self, name, help_text=None, labelnames=(), buckets: tuple[float, ...] = ()):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(buckets)

    def set_buckets(self, buckets: tuple[float, ...]) -> None:
        """Replace the bucket bounds; existing series restart empty."""
        with self._lock:
            self.buckets = tuple(buckets)
            self._series.clear()

    def _new_child(self):
        return _HistogramValue(self.buckets)

    def _render_child(self, values, child) -> list[str]:
        lines = []
        for bound, count in zip(child.bounds, child.cumulative(), strict=True):
            le = 'le="' + rust_f64(bound) + '"'
            lines.append(f"{self.name}_bucket{self._label_text(values, le)} {count}")
        inf = 'le="+Inf"'
        lines.append(f"{self.name}_bucket{self._label_text(values, inf)} {child.count}")
        lines.append(f"{self.name}_sum{self._label_text(values)} {rust_f64(child.sum)}")
        lines.append(f"{self.name}_count{self._label_text(values)} {child.count}")
        return lines


class _SummaryValue:
    __slots__ = ("count", "lock", "recent", "sum")

    def __init__(self) -> None:
        self.recent: deque[tuple[float, float]] = deque()
        self.count = 0
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Sequence[float]) -> None:
        """Several observations at one time: one clock read and one lock (a step's generations)."""
        now = time.monotonic()
        with self.lock:
            self.recent.extend((now, value) for value in values)
            self.count += len(values)
            self.sum += sum(values)
            while self.recent and self.recent[0][0] < now - SUMMARY_WINDOW_S:
                self.recent.popleft()

    def quantiles(self) -> list[float]:
        with self.lock:
            data = sorted(v for t, v in self.recent if t >= time.monotonic() - SUMMARY_WINDOW_S)
        if not data:
            return [0.0] * len(SUMMARY_QUANTILES)
        return [data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))] for q in SUMMARY_QUANTILES]


class Summary(_Metric):
    """Quantiles over the last minute, `_sum` and `_count` over all time (TGI's unbucketed distributions)."""

    kind = "summary"

    def _new_child(self):
        return _SummaryValue()

    def observe_many(self, values: Sequence[float]) -> None:
        if values:
            self._child(()).observe_many(values)

    def _render_child(self, values, child) -> list[str]:
        lines = []
        for q, v in zip(SUMMARY_QUANTILES, child.quantiles(), strict=True):
            quantile = 'quantile="' + rust_f64(q) + '"'
            lines.append(f"{self.name}{self._label_text(values, quantile)} {rust_f64(v)}")
        lines.append(f"{self.name}_sum{self._label_text(values)} {rust_f64(child.sum)}")
        lines.append(f"{self.name}_count{self._label_text(values)} {child.count}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []
        # Sets the gauges read from live state (the scheduler's) right before each scrape: they cost nothing
        # between scrapes, and read exactly what is there when Prometheus (or an endpoint picker) asks.
        self.before_render: Callable[[], None] | None = None

    def add(self, metric: _Metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        """The exposition text: counters, then gauges, then histograms and summaries."""
        if self.before_render is not None:
            self.before_render()
        order = {"counter": 0, "gauge": 1, "histogram": 2, "summary": 2}
        ordered = sorted(self.metrics, key=lambda m: order[m.kind])
        return "".join(m.render() for m in ordered)

    def clear(self) -> None:
        for metric in self.metrics:
            metric.clear()


REGISTRY = Registry()
_D = duration_buckets()


def _counter(name, help_text=None, labels=()):
    return REGISTRY.add(Counter(name, help_text, labels))


def _gauge(name, help_text=None, labels=()):
    return REGISTRY.add(Gauge(name, help_text, labels))


def _histogram(name, help_text=None, labels=(), buckets=_D):
    return REGISTRY.add(Histogram(name, help_text, labels, buckets))


# --- API layer ---------------------------------------------------------------------------------------------
REQUEST_COUNT = _counter("tgi_request_count", "Total number of requests")
REQUEST_SUCCESS = _counter("tgi_request_success", "Number of successful requests")
REQUEST_FAILURE = _counter("tgi_request_failure", None, ("err",))
REQUEST_DURATION = _histogram("tgi_request_duration", "Request duration")
REQUEST_VALIDATION_DURATION = _histogram("tgi_request_validation_duration", "Request validation duration")
REQUEST_QUEUE_DURATION = _histogram("tgi_request_queue_duration", "Request queue duration")
REQUEST_INFERENCE_DURATION = _histogram("tgi_request_inference_duration", "Request inference duration")
REQUEST_MEAN_TIME_PER_TOKEN_DURATION = _histogram(
    "tgi_request_mean_time_per_token_duration", "Mean time per token per request"
)
REQUEST_GENERATED_TOKENS = _histogram(
    "tgi_request_generated_tokens", "Generated tokens per request", buckets=linear_buckets(2048)
)
REQUEST_INPUT_LENGTH = _histogram(
    "tgi_request_input_length", "Input token length per request", buckets=linear_buckets(1024)
)
REQUEST_MAX_NEW_TOKENS = _histogram(
    "tgi_request_max_new_tokens", "Maximum new tokens per request", buckets=linear_buckets(2048)
)

# --- scheduler ---------------------------------------------------------------------------------------------
QUEUE_SIZE = _gauge("tgi_queue_size", "Current queue size")
BATCH_CURRENT_SIZE = _gauge("tgi_batch_current_size", "Current batch size")
BATCH_CURRENT_MAX_TOKENS = _gauge("tgi_batch_current_max_tokens", "Maximum tokens for the current batch")
BATCH_MAX_TOTAL_TOKENS = _gauge("tgi_batch_max_total_tokens")
BATCH_NEXT_SIZE = _histogram(
    "tgi_batch_next_size", "Batch size of the next batch", buckets=tuple(float(i + 1) for i in range(1024))
)
BATCH_INFERENCE_COUNT = _counter(
    "tgi_batch_inference_count", "Inference calls per method (prefill or decode)", ("method",)
)
BATCH_INFERENCE_SUCCESS = _counter(
    "tgi_batch_inference_success",
    "Number of successful inference calls per method (prefill or decode)",
    ("method",),
)
BATCH_INFERENCE_FAILURE = _counter("tgi_batch_inference_failure", None, ("method",))
BATCH_INFERENCE_DURATION = _histogram("tgi_batch_inference_duration", "Batch inference duration", ("method",))
BATCH_FORWARD_DURATION = _histogram(
    "tgi_batch_forward_duration", "Batch forward duration per method (prefill or decode)", ("method",)
)
BATCH_DECODE_DURATION = _histogram(
    "tgi_batch_decode_duration", "Time spent decoding a batch per method (prefill or decode)", ("method",)
)
BATCH_FILTER_DURATION = _histogram(
    "tgi_batch_filter_duration",
    "Time spent filtering batches and sending generated tokens per method (prefill or decode)",
    ("method",),
)
BATCH_CONCAT = _counter("tgi_batch_concat", None, ("reason",))
BATCH_CONCAT_DURATION = _histogram("tgi_batch_concat_duration", None, ("method",))
REQUEST_SKIPPED_TOKENS = REGISTRY.add(Summary("tgi_request_skipped_tokens", "Speculated tokens per request"))

# --- tgi-async's own (namespace tgi_async_*; not in TGI) ------------------------------------------------
# Seconds the shards spent inside step handlers (their total_ns), summed: busy fraction = rate / wall time.
# A gauge so fractions of a second survive rendering (counters render as integers).
SHARD_BUSY_SECONDS = _gauge("tgi_async_shard_busy_seconds", "Seconds shards spent in Prefill/Decode handlers")
# Prompt tokens a request did not compute because a cached prefix held their KV (prefix caching; TGI has
# no such metric).
PREFIX_CACHED_TOKENS = _histogram(
    "tgi_async_prefix_cached_tokens",
    "Prompt tokens reused from the prefix cache, per request",
    buckets=linear_buckets(1024),
)
# Pipelined calls (steps, queued filters) that found their batch gone: every request in it finished a step
# earlier.
VANISHED_BATCH_CALLS = _counter(
    "tgi_async_vanished_batch_calls", "Pipelined calls that met a batch the shard had dropped"
)
# Prefills sent again with part of a failed Prefill's requests, to find the one that failed it (scheduler/
# isolation.py; TGI fails the whole batch).
PREFILL_ISOLATION_RETRIES = _counter(
    "tgi_async_prefill_isolation_retries",
    "Prefills sent again with part of a failed batch's requests, to find the request that failed it",
)

# Kubernetes Gateway API Inference Extension (model-server protocol, vLLM semantics; docs/deploy.md has the
# endpoint picker flags): queued = tgi_queue_size, running = tgi_batch_current_size, and these three, set at
# each scrape from the scheduler state.
KV_CACHE_USAGE = _gauge(
    "tgi_async_kv_cache_usage_perc", "Fraction of KV-cache blocks held by running requests (0 to 1)"
)
CACHE_CONFIG_INFO = _gauge(
    "tgi_async_cache_config_info", "KV cache layout (value 1)", ("block_size", "num_gpu_blocks")
)
LORA_REQUESTS_INFO = _gauge(
    "tgi_async_lora_requests_info",
    "LoRA adapters of running and waiting requests (value: the time of the scrape)",
    ("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
)


def configure(max_input_tokens: int, max_total_tokens: int) -> None:
    """Size the token-count buckets from the router's limits (TGI does it at start-up)."""
    REQUEST_INPUT_LENGTH.set_buckets(linear_buckets(max_input_tokens))
    PREFIX_CACHED_TOKENS.set_buckets(linear_buckets(max_input_tokens))
    REQUEST_GENERATED_TOKENS.set_buckets(linear_buckets(max_total_tokens))
    REQUEST_MAX_NEW_TOKENS.set_buckets(linear_buckets(max_total_tokens))


def render() -> str:
    """The /metrics body (text/plain; charset=utf-8)."""
    return REGISTRY.render()
