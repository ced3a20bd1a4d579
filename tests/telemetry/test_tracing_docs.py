"""docs/tracing.md names every span and event the code exports, and the flags it describes exist."""

from __future__ import annotations

import re
from pathlib import Path

from tgi_async.router.cli import CLIENT_CONTEXTS
from tgi_async.telemetry import attributes as a

DOC = (Path(__file__).parents[2] / "docs" / "tracing.md").read_text()


def test_every_span_and_event_name_is_documented():
    names = [v for k, v in vars(a).items() if k.startswith(("SPAN_", "EVENT_"))]
    assert names
    assert [n for n in names if not re.search(rf"[`\s]{n}[`,\s]", DOC)] == []


def test_the_names_that_make_traces_readable_without_links_are_documented():
    for name in (
        a.LINKED_TRACE_ID,
        a.LINKED_SPAN_ID,
        a.LINK_KIND,
        a.SHARD_MODEL_WAIT_NS,
        a.SHARD_MODEL_RUN_NS,
    ):
        assert f"`{name}`" in DOC, name
    assert "## Jaeger" in DOC and "## Arize Phoenix" in DOC
    for value in CLIENT_CONTEXTS:
        assert f"--otlp-client-context {value}" in DOC or f"OTLP_CLIENT_CONTEXT={value}" in DOC, value
