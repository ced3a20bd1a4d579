"""`tgi-async router`: the flags and env vars of TGI v3.3.x's `text-generation-router`, plus `--scheduler`."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from tgi_async.flags import add_version, describe, reject_unknown_flags
from tgi_async.launcher.config import LaunchConfig
from tgi_async.router.http_limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_SILENT_CONNECTIONS,
)
from tgi_async.scheduler.config import (
    DEFAULT_HEALTH_STALL_S,
    DEFAULT_PREFILL_STEP_TOKENS,
    DEFAULT_SHARD_CALL_TIMEOUT_S,
)


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _env_default(name: str, default: Any, cast=str) -> Any:
    """TGI's router reads every flag from an env var of the same name (clap `env`)."""
    raw = os.environ.get(_env_name(name))
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.lower() in ("1", "true", "yes", "on")
    return cast(raw)


# Help texts the launcher's flags already have (one text per flag; the router-only ones are below).
_LAUNCH_HELP = {spec.name: spec.metadata["help"] for spec in fields(LaunchConfig) if spec.metadata}
_ROUTER_HELP = {
    "waiting_served_ratio": "waiting/running ratio that triggers a prefill (the launcher passes 0.3)",
    "master_shard_uds_path": "the rank-0 shard's Unix socket; it lists the others",
    "tokenizer_name": "tokenizer to load: a Hub id or a local directory (the launcher passes --model-id)",
    "logger_level": "log level: DEBUG, INFO, WARNING or ERROR",
    "max_image_fetch_size": "largest image a request may fetch (accepted, not applicable)",
    "max_batch_prefill_tokens": "prompt tokens per prefill batch",
    "usage_stats": "usage statistics (accepted, none are collected)",
    "ngrok": "ngrok tunnel (accepted, not applicable)",
}


def _flag(parser: argparse.ArgumentParser, name: str, default: Any = None, cast=str, **kwargs: Any) -> None:
    key = name.replace("-", "_")
    text = kwargs.pop("help", None) or _ROUTER_HELP.get(key) or _LAUNCH_HELP.get(key, "")
    if cast is bool:
        parser.add_argument(
            f"--{name}",
            action="store_true",
            default=_env_default(name, False, bool),
            help=describe(text, _env_name(name), None),
            **kwargs,
        )
    else:
        parser.add_argument(
            f"--{name}",
            type=cast,
            default=_env_default(name, default, cast),
            help=describe(text, _env_name(name), default),
            **kwargs,
        )


# Flags TGI's router accepts that change nothing here; accepted so launchers and scripts keep working.
NOT_APPLICABLE = ("ngrok", "ngrok_authtoken", "ngrok_edge", "usage_stats", "max_image_fetch_size")


def add_router_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "max-concurrent-requests", 128, int)
    _flag(parser, "max-best-of", 2, int)
    _flag(parser, "max-stop-sequences", 4, int)
    _flag(parser, "max-top-n-tokens", 5, int)
    _flag(parser, "max-input-tokens", None, int)
    _flag(parser, "max-total-tokens", None, int)
    _flag(parser, "waiting-served-ratio", 1.2, float)
    _flag(parser, "max-batch-prefill-tokens", 4096, int)
    _flag(parser, "max-batch-total-tokens", None, int)
    _flag(parser, "max-waiting-tokens", 20, int)
    _flag(parser, "max-batch-size", None, int)
    _flag(parser, "hostname", "0.0.0.0")
    _flag(parser, "port", 3000, int)
    _flag(parser, "prometheus-port", 9000, int)
    _flag(parser, "master-shard-uds-path", "/tmp/text-generation-server-0")
    _flag(parser, "tokenizer-name", "bigscience/bloom")
    _flag(parser, "tokenizer-config-path", None)
    _flag(parser, "revision", None)
    _flag(parser, "trust-remote-code", cast=bool)
    _flag(parser, "validation-workers", 2, int)
    _flag(parser, "api-key", None)
    _flag(parser, "json-output", cast=bool)
    _flag(parser, "otlp-endpoint", None)
    _flag(parser, "otlp-service-name", "text-generation-inference.router")
    parser.add_argument(
        "--cors-allow-origin",
        action="append",
        default=_split(os.environ.get("CORS_ALLOW_ORIGIN")),
        help=describe(_LAUNCH_HELP["cors_allow_origin"], "CORS_ALLOW_ORIGIN", None),
    )
    _flag(parser, "ngrok", cast=bool)
    _flag(parser, "ngrok-authtoken", None)
    _flag(parser, "ngrok-edge", None)
    _flag(parser, "disable-grammar-support", cast=bool)
    _flag(parser, "max-client-batch-size", 4, int)
    _flag(parser, "usage-stats", "on")
    _flag(parser, "payload-limit", 2_000_000, int)
    _flag(parser, "max-image-fetch-size", 1_073_741_824, int)
    # ours
    parser.add_argument(
        "--scheduler",
        choices=("async", "sync"),
        default=os.environ.get("TGI_ASYNC_SCHEDULER") or "async",
        help=describe(
            "async: decoupled prefill/decode loops with pipelined shard calls; sync: TGI's batching loop",
            "TGI_ASYNC_SCHEDULER",
            "async",
        ),
    )
    _flag(
        parser,
        "prefill-step-tokens",
        DEFAULT_PREFILL_STEP_TOKENS,
        int,
        help="async scheduler: prompt tokens computed per shard step while other requests decode "
        "(bounds how long a new prompt stalls the streams)",
    )
    _flag(
        parser,
        "shard-call-timeout",
        DEFAULT_SHARD_CALL_TIMEOUT_S,
        float,
        help="seconds a shard step may take before its requests fail (a hung shard never hangs a stream; "
        "0: no deadline)",
    )
    _flag(
        parser,
        "health-stall-timeout",
        DEFAULT_HEALTH_STALL_S,
        float,
        help="/health answers 503 while a shard call has been running this many seconds",
    )
    _flag(
        parser,
        "http-header-timeout",
        DEFAULT_HEADER_TIMEOUT_S,
        float,
        help="seconds a connection may take to send a request's line and headers (from its opening, or from "
        "the next request's first byte); then it is closed (0: no limit)",
    )
    _flag(
        parser,
        "http-body-timeout",
        DEFAULT_BODY_TIMEOUT_S,
        float,
        help="seconds a request's body may take after its headers; then 408 and the connection is closed "
        "(0: no limit)",
    )
    _flag(
        parser,
        "http-max-silent-connections",
        DEFAULT_MAX_SILENT_CONNECTIONS,
        int,
        help="connections open without having sent a byte; past it the oldest is closed (0: no limit)",
    )
    _flag(parser, "otlp-file", None, help="also write spans as OTLP JSON lines to this file")
    parser.add_argument(
        "--otlp-client-context",
        choices=CLIENT_CONTEXTS,
        default=_env_default("otlp-client-context", "parent"),
        help="a client's traceparent: the parent of the route span (parent, as TGI), or only linked from a "
        "new root (link: the request is a root span, listed by backends that list roots, e.g. Phoenix; env "
        "OTLP_CLIENT_CONTEXT)",
    )
    _flag(parser, "logger-level", "INFO")


CLIENT_CONTEXTS = ("parent", "link")


def _split(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "router",
        help="serve TGI's HTTP API over generate.v3 shards (TGI's text-generation-router flags)",
        description="Serve TGI's HTTP API over generate.v3 shards (TGI's text-generation-router flags).",
        allow_abbrev=False,
    )
    add_router_flags(parser)
    add_version(parser)
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="router_command")
    schema = commands.add_parser("print-schema", help="print the OpenAPI schema and exit")
    schema.set_defaults(func=print_schema)
    reject_unknown_flags(parser)


def print_schema(args: argparse.Namespace) -> int:
    from tgi_async.api.app import print_schema as render

    print(render())
    return 0


def run(args: argparse.Namespace) -> int:
    from tgi_async.router.server import serve

    return serve(args)
