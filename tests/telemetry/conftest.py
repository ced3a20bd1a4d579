"""A real OTLP/gRPC receiver, and a traced stack (bundled shard + router, both exporting to it and to one
OTLP JSON file) started once per module that asks for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.telemetry.otlp_receiver import OtlpReceiver
from tgi_async.launcher.processes import (
    ChildProcess,
    free_port,
    short_tmp_dir,
    spawn,
    start_bundled_shard,
    tgi_async_command,
    wait_for_http,
)

SHARD_SERVICE = "test.shard"
ROUTER_SERVICE = "test.router"
# export every 50 ms instead of every 5 s, so spans reach the receiver while the test waits
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@dataclass
class TracedStack:
    url: str
    receiver: OtlpReceiver | None
    trace_file: Path
    shard: ChildProcess
    router: ChildProcess


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def start_traced_stack(
    model_dir: Path,
    receiver: OtlpReceiver | None,
    *router_flags: str,
    with_file: bool = True,
    env: dict[str, str] = FAST_EXPORT,
) -> TracedStack:
    """Shard and router with --otlp-endpoint (the receiver) and --otlp-file (one shared file); with no
    receiver, neither (tracing off)."""
    directory = Path(short_tmp_dir())
    trace_file = directory / "trace.jsonl"
    tracing: tuple[str, ...] = ()
    if receiver is not None:
        tracing = ("--otlp-endpoint", receiver.endpoint)
        tracing += ("--otlp-file", str(trace_file)) if with_file else ()
    shard, socket_path = start_bundled_shard(
        model_dir, *tracing, "--otlp-service-name", SHARD_SERVICE, env=env
    )
    port = free_port()
    flags = {
        "--master-shard-uds-path": socket_path,
        "--tokenizer-name": str(model_dir),
        "--port": str(port),
        "--prometheus-port": "0",
        "--otlp-service-name": ROUTER_SERVICE,
    }
    argv = [item for pair in flags.items() for item in pair]
    router = spawn(
        "router",
        tgi_async_command("router", *argv, *tracing, *router_flags),
        log_path=directory / "router.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(router, f"{url}/health")
    except Exception:
        router.stop()
        shard.stop()
        raise
    return TracedStack(url, receiver, trace_file, shard, router)


def stop_stack(stack: TracedStack) -> None:
    stack.router.stop()
    stack.shard.stop()


@pytest.fixture(scope="module")
def traced_async(tiny_model_dir: Path, otlp_receiver: OtlpReceiver) -> Iterator[TracedStack]:
    """The async scheduler, sized so a few requests exercise every decision: at most 2 requests per batch
    (a third waits: defer), prompts cut into 16-token chunks (the first by the router's step budget, the next
    ones by the shard, within Warmup's max_prefill_tokens), a 4th concurrent request is refused (429)."""
    stack = start_traced_stack(
        tiny_model_dir,
        otlp_receiver,
        "--scheduler", "async",
        "--max-batch-size", "2",
        "--prefill-step-tokens", "16",
        "--max-batch-prefill-tokens", "16",
        "--max-concurrent-requests", "3",
    )  # fmt: skip
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def traced_sync(tiny_model_dir: Path, otlp_receiver: OtlpReceiver) -> Iterator[TracedStack]:
    stack = start_traced_stack(tiny_model_dir, otlp_receiver, "--scheduler", "sync")
    yield stack
    stop_stack(stack)


def random_traceparent() -> tuple[str, str, str]:
    """(header, trace id, parent span id) as a W3C client would send them."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id
