"""The router process: shards -> scheduler -> FastAPI app on uvicorn (+ the Prometheus port)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import uuid

import uvicorn
from starlette.types import ASGIApp

from tgi_async import event_loop, metrics
from tgi_async.launcher.config import LaunchError
from tgi_async.launcher.preflight import check_port_free
from tgi_async.logs import setup_logging
from tgi_async.memory import freeze_startup_objects, map_large_allocations
from tgi_async.router.cli import NOT_APPLICABLE
from tgi_async.router.http_guard import GuardedHttpToolsProtocol
from tgi_async.router.http_limits import HttpLimits
from tgi_async.router.startup import StartupError, connect, resolve_limits, warm_up
from tgi_async.scheduler.config import SchedulerConfig
from tgi_async.telemetry import setup_from_args

logger = logging.getLogger("tgi_async.router")


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the router stops both servers, then the scheduler."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _uvicorn_config(app: ASGIApp, host: str, port: int, limits: HttpLimits) -> uvicorn.Config:
    """uvicorn on httptools with the read limits it lacks (http_guard.py); no websockets (TGI has none)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=GuardedHttpToolsProtocol.bound(limits),
        ws="none",
        log_config=None,
        access_log=False,
    )


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.json_output, args.logger_level)
    setup_from_args(args, "text-generation-inference.router")  # before any client, scheduler or app exists
    if args.validation_workers == 0:
        logger.error("`validation_workers` must be > 0")
        return 1
    if args.max_batch_size == 0:
        logger.error("`max_batch_size` must be > 0")
        return 1
    if min(args.http_header_timeout, args.http_body_timeout, args.http_max_silent_connections) < 0:
        logger.error("`http_*_timeout` and `http_max_silent_connections` must be >= 0")
        return 1
    try:  # before connecting to the shards: a busy port is one line, not a traceback after warmup
        check_port_free(args.hostname, args.port, "--port")
        if args.prometheus_port and args.prometheus_port != args.port:
            check_port_free(args.hostname, args.prometheus_port, "--prometheus-port")
    except LaunchError as exc:
        logger.error("%s", exc)
        return 1
    for name in NOT_APPLICABLE:
        if getattr(args, name) not in (None, False, "on", 1_073_741_824):
            logger.info("--%s accepted, not applicable to tgi-async", name.replace("_", "-"))
    try:
        return event_loop.run(_serve(args))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            args.tokenizer_name, revision=args.revision, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise StartupError(f"Could not load the tokenizer {args.tokenizer_name!r}: {exc}") from None


async def _serve(args: argparse.Namespace) -> int:
    from tgi_async.api.app import create_app, metrics_app
    from tgi_async.api.config import ApiConfig
    from tgi_async.scheduler.factory import create_scheduler

    client = await connect(args.master_shard_uds_path, args.shard_call_timeout or None)
    # NOTE: Warmup gets TGI's own max_prefill_tokens whatever the policy: TGI's shards size their KV cache
    # after profiling that forward, and no step of ours is larger (--prefill-step-tokens is the router's).
    info, warmup = await warm_up(
        client,
        args.max_input_tokens,
        args.max_batch_prefill_tokens,
        args.max_total_tokens,
        args.max_batch_size,
    )
    limits = resolve_limits(
        warmup,
        info,
        args.max_input_tokens,
        args.max_total_tokens,
        args.max_batch_prefill_tokens,
        args.max_batch_total_tokens,
    )
    logger.info(
        "Setting max batch total tokens to %d",
        limits.max_batch_total_tokens,
        extra={"max_input_tokens": limits.max_input_tokens, "max_total_tokens": limits.max_total_tokens},
    )
    metrics.BATCH_MAX_TOTAL_TOKENS.set(limits.max_batch_total_tokens)
    tokenizer = await asyncio.to_thread(load_tokenizer, args)
    scheduler_config = SchedulerConfig(
        policy=args.scheduler,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_batch_total_tokens=limits.max_batch_total_tokens,
        waiting_served_ratio=args.waiting_served_ratio,
        max_waiting_tokens=args.max_waiting_tokens,
        max_batch_size=args.max_batch_size,
        prefill_step_tokens=args.prefill_step_tokens,
        health_stall_s=args.health_stall_timeout,
    )
    scheduler = create_scheduler(client, info, scheduler_config)
    api_config = ApiConfig(
        model_id=args.tokenizer_name,
        tokenizer_name=args.tokenizer_name,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_top_n_tokens=args.max_top_n_tokens,
        max_client_batch_size=args.max_client_batch_size,
        validation_workers=args.validation_workers,
        api_key=args.api_key,
        cors_allow_origin=tuple(args.cors_allow_origin or ()),
        payload_limit=args.payload_limit,
        disable_grammar_support=args.disable_grammar_support,
        waiting_served_ratio=args.waiting_served_ratio,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_batch_total_tokens=limits.max_batch_total_tokens,
        max_waiting_tokens=args.max_waiting_tokens,
        max_batch_size=args.max_batch_size,
    )
    app = create_app(
        api_config,
        scheduler,
        tokenizer,
        extra_info={
            "scheduler": args.scheduler,
            "shard_device_type": info.device_type,
            # which router answers this port: the launcher checks it is the one it started
            "instance_id": os.environ.get("TGI_ASYNC_INSTANCE_ID") or uuid.uuid4().hex,
        },
    )
    limits = HttpLimits(
        header_timeout=args.http_header_timeout,
        body_timeout=args.http_body_timeout,
        max_silent_connections=args.http_max_silent_connections,
    )
    servers = [_Server(_uvicorn_config(app, args.hostname, args.port, limits))]
    if args.prometheus_port and args.prometheus_port != args.port:
        servers.append(_Server(_uvicorn_config(metrics_app(), args.hostname, args.prometheus_port, limits)))
    map_large_allocations()
    validator = app.state.validator
    await validator.start()  # the tokenizer workers, before the first large request needs them
    freeze_startup_objects()
    scheduler.start()
    logger.info(
        "Connected",
        extra={
            "scheduler": args.scheduler,
            "host": args.hostname,
            "port": args.port,
            "chunking": info.support_chunking,
        },
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [setattr(s, "should_exit", True) for s in servers])
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        await scheduler.stop()
        await client.close()
        validator.close()
    return 0
