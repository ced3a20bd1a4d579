"""Metric names, labels, buckets and the text rendering of metrics-exporter-prometheus (TGI's exporter)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tgi_async import metrics
from tgi_async.metrics import Counter, Gauge, Histogram, Registry, Summary, rust_f64

# (name, kind, labels) of every metric TGI v3.3.x's router and v3 backend record
TGI_METRICS = [
    ("tgi_request_count", "counter", ()),
    ("tgi_request_success", "counter", ()),
    ("tgi_request_failure", "counter", ("err",)),
    ("tgi_request_duration", "histogram", ()),
    ("tgi_request_validation_duration", "histogram", ()),
    ("tgi_request_queue_duration", "histogram", ()),
    ("tgi_request_inference_duration", "histogram", ()),
    ("tgi_request_mean_time_per_token_duration", "histogram", ()),
    ("tgi_request_generated_tokens", "histogram", ()),
    ("tgi_request_input_length", "histogram", ()),
    ("tgi_request_max_new_tokens", "histogram", ()),
    ("tgi_request_skipped_tokens", "summary", ()),
    ("tgi_queue_size", "gauge", ()),
    ("tgi_batch_current_size", "gauge", ()),
    ("tgi_batch_current_max_tokens", "gauge", ()),
    ("tgi_batch_max_total_tokens", "gauge", ()),
    ("tgi_batch_next_size", "histogram", ()),
    ("tgi_batch_inference_count", "counter", ("method",)),
    ("tgi_batch_inference_success", "counter", ("method",)),
    ("tgi_batch_inference_failure", "counter", ("method",)),
    ("tgi_batch_inference_duration", "histogram", ("method",)),
    ("tgi_batch_forward_duration", "histogram", ("method",)),
    ("tgi_batch_decode_duration", "histogram", ("method",)),
    ("tgi_batch_filter_duration", "histogram", ("method",)),
    ("tgi_batch_concat", "counter", ("reason",)),
    ("tgi_batch_concat_duration", "histogram", ("method",)),
]


@pytest.mark.parametrize(("name", "kind", "labels"), TGI_METRICS)
def test_every_tgi_metric_is_defined(name, kind, labels):
    found = {m.name: m for m in metrics.REGISTRY.metrics}
    assert name in found
    assert (found[name].kind, found[name].labelnames) == (kind, labels)


def test_counters_keep_tgis_names_without_total():
    registry = Registry()
    count = registry.add(Counter("tgi_request_count", "Total number of requests"))
    failure = registry.add(Counter("tgi_request_failure", None, ("err",)))
    count.inc()
    count.inc()
    failure.labels("validation").inc()
    text = registry.render()
    assert text == (
        "# HELP tgi_request_count Total number of requests\n"
        "# TYPE tgi_request_count counter\n"
        "tgi_request_count 2\n"
        "\n"
        "# TYPE tgi_request_failure counter\n"
        'tgi_request_failure{err="validation"} 1\n'
        "\n"
    )
    assert "_total" not in text
    # a valid exposition (the parser reads our counter lines as counters)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == {"tgi_request_count": "counter", "tgi_request_failure": "counter"}


def test_only_touched_series_are_rendered():
    registry = Registry()
    gauge = registry.add(Gauge("tgi_queue_size", "Current queue size"))
    assert registry.render() == ""
    gauge.set(3)
    assert (
        registry.render()
        == "# HELP tgi_queue_size Current queue size\n# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n\n"
    )


def test_histogram_layout_and_buckets():
    registry = Registry()
    histogram = registry.add(
        Histogram("tgi_batch_forward_duration", "x", ("method",), metrics.duration_buckets())
    )
    histogram.labels(method="decode").observe(0.0002)
    histogram.labels(method="decode").observe(1.0)
    lines = registry.render().rstrip("\n").splitlines()
    assert lines[2] == 'tgi_batch_forward_duration_bucket{method="decode",le="0.00015000000000000001"} 0'
    assert lines[3] == 'tgi_batch_forward_duration_bucket{method="decode",le="0.00022500000000000002"} 1'
    assert lines[-3] == 'tgi_batch_forward_duration_bucket{method="decode",le="+Inf"} 2'
    assert lines[-2] == 'tgi_batch_forward_duration_sum{method="decode"} 1.0002'
    assert lines[-1] == 'tgi_batch_forward_duration_count{method="decode"} 2'
    assert len(metrics.duration_buckets()) == 35

    edges = registry.add(Histogram("edges", "x", (), (1.0, 2.0, 4.0)))
    for value in (1.0, 1.5, 4.0, 9.0, math.nan):  # a bound counts in its own bucket; past the last: +Inf
        edges.observe(value)
    buckets = [line.rsplit(" ", 1)[1] for line in registry.render().splitlines() if "edges_bucket" in line]
    assert buckets == ["1", "2", "3", "5"]
    assert metrics.linear_buckets(4096)[:2] == (40.96, 81.92) and len(metrics.linear_buckets(4096)) == 100
    families = list(text_string_to_metric_families(registry.render()))
    assert families[0].type == "histogram"


def test_summary_quantiles():
    registry = Registry()
    summary = registry.add(Summary("tgi_request_skipped_tokens", "Speculated tokens per request"))
    for value in (0, 1, 2, 3):
        summary.observe(value)
    text = registry.render()
    assert 'tgi_request_skipped_tokens{quantile="0"} 0\n' in text
    assert 'tgi_request_skipped_tokens{quantile="1"} 3\n' in text
    assert "tgi_request_skipped_tokens_count 4\n" in text
    assert next(iter(text_string_to_metric_families(text))).type == "summary"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5.0, "5"),
        (-0.0, "-0"),
        (0.5, "0.5"),
        (1.5e-05, "0.000015"),
        (1e20, "100000000000000000000"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_floats_print_like_rust_display(value, text):
    assert rust_f64(value) == text


def test_configure_sizes_token_buckets():
    metrics.configure(max_input_tokens=200, max_total_tokens=400)
    assert metrics.REQUEST_INPUT_LENGTH.buckets[:2] == (2.0, 4.0)
    assert metrics.REQUEST_GENERATED_TOKENS.buckets[-1] == 400.0
    assert metrics.REQUEST_MAX_NEW_TOKENS.buckets[0] == 4.0
