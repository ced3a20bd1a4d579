"""Logs shaped like TGI's: tracing_subscriber's lines (router: flat JSON with file and line; launcher: fields
nested), loguru's JSON for the shard, one line per request with TGI's span fields, on stdout."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tgi_async.api import protocol as p
from tgi_async.api.request_log import parameters_debug, rust_duration
from tgi_async.launcher.processes import ChildProcess, start_bundled_shard, start_router
from tgi_async.logs import Debug, LogSpan, LoguruJsonFormatter, TracingFormatter
from tgi_async.proto import ShardStub, pb

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"  # tracing's SystemTime: microseconds, UTC


def record(level: int = logging.INFO, message: str = "Success", **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("tgi_async.router.server", level, "/x/tgi_async/api/g.py", 7, message, (), None)
    made.__dict__.update(extra)
    return made


def span() -> LogSpan:
    return LogSpan("generate", {"parameters": Debug("GenerateParameters { best_of: None }"), "seed": "None"})


def test_router_json_is_flat_with_file_line_and_spans() -> None:
    formatted = TracingFormatter(True, "router").format(record(logging.WARNING, port=3, spans=[span()]))
    line = json.loads(formatted)
    assert list(line) == [
        "timestamp", "level", "message", "port", "target", "filename", "line_number", "span", "spans",
    ]  # fmt: skip
    assert re.fullmatch(STAMP, line["timestamp"])
    assert (line["level"], line["message"], line["port"]) == ("WARN", "Success", 3)  # tracing's level names
    assert (line["target"], line["line_number"]) == ("tgi_async.router.server", 7)
    expected = {"parameters": "GenerateParameters { best_of: None }", "seed": "None", "name": "generate"}
    assert line["span"] == expected and line["spans"] == [expected]
    assert list(line["span"]) == ["parameters", "seed", "name"]  # sorted fields, then the name


def test_launcher_json_nests_fields_and_has_no_file() -> None:
    line = json.loads(TracingFormatter(True, "launcher").format(record(message="Starting shard", rank=0)))
    assert line == {
        "timestamp": line["timestamp"],
        "level": "INFO",
        "fields": {"message": "Starting shard", "rank": 0},
        "target": "tgi_async.router.server",
    }


def test_text_lines_are_tracings_full_and_compact_formats() -> None:
    full = TracingFormatter(False, "router").format(record(spans=[span()], host="h"))
    assert re.fullmatch(
        STAMP + r'  INFO generate\{parameters=GenerateParameters \{ best_of: None \} seed="None"\}: '
        r'tgi_async\.router\.server: /x/tgi_async/api/g\.py:7: Success host="h"',
        full,
    ), full
    compact = TracingFormatter(False, "launcher").format(record(logging.ERROR, "boom", rank=1))
    assert re.fullmatch(STAMP + r" ERROR tgi_async\.router\.server: boom rank=1", compact), compact


def test_shard_json_is_loguru_shaped() -> None:
    line = json.loads(LoguruJsonFormatter().format(record(logging.DEBUG, "Decode: gone")))
    assert line["text"] == "Decode: gone\n"
    assert line["record"]["level"]["name"] == "DEBUG" and line["record"]["message"] == "Decode: gone"


def test_durations_and_parameters_as_rust_prints_them() -> None:
    cases = {1.5e-3: "1.5ms", 12e-6: "12µs", 2.0: "2s", 1.234567891: "1.234567891s", 150e-9: "150ns"}
    assert {seconds: rust_duration(seconds) for seconds in cases} == cases
    assert parameters_debug(p.GenerateParameters()) == (
        "GenerateParameters { best_of: None, temperature: None, repetition_penalty: None, "
        "frequency_penalty: None, top_k: None, top_p: None, typical_p: None, do_sample: false, "
        "max_new_tokens: None, return_full_text: None, stop: [], truncate: None, watermark: false, "
        "details: false, decoder_input_details: false, seed: None, top_n_tokens: None, grammar: None, "
        "adapter_id: None }"
    )
    given = p.GenerateParameters(temperature=0.1, stop=["a"], max_new_tokens=3, seed=4, do_sample=True)
    text = parameters_debug(given)
    assert "temperature: Some(0.1)" in text and 'stop: ["a"]' in text and "seed: Some(4)" in text
    assert "do_sample: true, max_new_tokens: Some(3)" in text


@pytest.fixture(scope="module")
def json_stack(tiny_model_dir: Path) -> Iterator[tuple[ChildProcess, str, ChildProcess, str]]:
    """A bundled shard (DEBUG, JSON) and a router (JSON) of their own: their log files are read here."""
    shard, socket_path = start_bundled_shard(tiny_model_dir, "--json-output", "--logger-level", "DEBUG")
    router, url = start_router(tiny_model_dir, socket_path, "--json-output")
    yield shard, socket_path, router, url
    router.stop()
    shard.stop()


def _json_lines(child: ChildProcess, expect: str, timeout: float = 10.0) -> list[dict]:
    """The child's JSON log lines, once one of them contains `expect`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in child.log_tail(10_000).splitlines() if x.startswith("{")]
        if any(expect in json.dumps(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_one_line_per_request_with_tgis_span_fields(json_stack) -> None:  # type: ignore[no-untyped-def]
    _, _, router, url = json_stack
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 3, "seed": 7, "do_sample": True}}
    assert _post(f"{url}/generate", body) == 200
    assert _post(f"{url}/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}) == 422
    lines = _json_lines(router, "strictly positive")
    success = [line for line in lines if line.get("message") == "Success"]
    assert len(success) == 1, lines[-5:]
    fields = success[0]["span"]
    assert fields["name"] == "generate" and success[0]["level"] == "INFO"
    assert fields["seed"] == "Some(7)" and "max_new_tokens: Some(3)" in fields["parameters"]
    for name in ("total_time", "validation_time", "queue_time", "inference_time", "time_per_token"):
        assert re.fullmatch(r"\d+(\.\d+)?(s|ms|µs|ns)", fields[name]), (name, fields[name])
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert [e["message"] for e in errors] == ["`max_new_tokens` must be strictly positive"]
    assert errors[0]["span"]["name"] == "generate" and "total_time" not in errors[0]["span"]


async def test_a_vanished_batch_is_logged_at_debug_not_warning(json_stack) -> None:  # type: ignore[no-untyped-def]
    shard, socket_path, _, _ = json_stack
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ShardStub(channel).Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=987654)]))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    lines = _json_lines(shard, "987654")
    logged = [line["record"] for line in lines if "987654" in line["record"]["message"]]
    assert [r["level"]["name"] for r in logged] == ["DEBUG"], logged
