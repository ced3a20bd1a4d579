"""`tgi-async shard serve MODEL_ID`: the bundled shard, with the flags of TGI's text-generation-server.

Flags the bundled shard cannot honor (quantization, speculation, LoRA adapters, tensor parallelism) fail at
startup with a clear message instead of being ignored.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("tgi_async.shard")

DEFAULT_UDS_PATH = "/tmp/text-generation-server"
DTYPE_CHOICES = ("float32", "float16", "bfloat16")
KV_CACHE_DTYPE_CHOICES = ("fp8_e4m3fn", "fp8_e5m2")


class ConfigError(ValueError):
    """A flag or environment value the bundled shard cannot run with."""


def add_parser(subparsers) -> None:
    shard = subparsers.add_parser("shard", help="the bundled transformers shard (generate.v3 over gRPC)")
    commands = shard.add_subparsers(dest="shard_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve MODEL_ID on unix://{uds-path}-{RANK}",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("model_id", metavar="MODEL_ID", help="a local model directory or a hub model id")
    serve.add_argument("--revision", default=None, help="hub revision of MODEL_ID")
    serve.add_argument("--sharded", action=argparse.BooleanOptionalAction, default=False)
    serve.add_argument("--quantize", default=None, help="not supported by the bundled shard")
    serve.add_argument("--speculate", type=int, default=None, help="only 0 is supported")
    serve.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=None, help="default: float32 on CPU, bf16 on CUDA"
    )
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPE_CHOICES, default=None)
    serve.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)
    serve.add_argument("--uds-path", default=DEFAULT_UDS_PATH, help="socket prefix; binds {uds-path}-{RANK}")
    serve.add_argument("--logger-level", default="INFO")
    serve.add_argument("--json-output", action=argparse.BooleanOptionalAction, default=False)
    serve.add_argument("--otlp-endpoint", default=None)
    serve.add_argument("--otlp-service-name", default="text-generation-inference.server")
    serve.add_argument("--otlp-file", default=None, help="also append spans to this file (OTLP JSON lines)")
    serve.add_argument("--max-input-tokens", type=int, default=None)
    serve.add_argument("--lora-adapters", default=None, help="not supported by the bundled shard")
    serve.add_argument(
        "--kv-cache-memory-fraction",
        type=float,
        default=0.05,
        help="CPU: share of available RAM for the KV cache (capped by --kv-cache-max-gib)",
    )
    serve.add_argument("--kv-cache-max-gib", type=float, default=4.0, help="CPU: upper bound on the KV cache")
    serve.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    serve.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse the KV of cached prompt prefixes the router names (default: env PREFIX_CACHING as for "
        "TGI's shard, else on; --simulate: the profile's)",
    )
    serve.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute step N+1 while the host finishes step N (--no-overlap: one forward at a time)",
    )
    serve.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replay decode forwards as CUDA graphs (CUDA; experimental: not yet measured on a GPU)",
    )
    serve.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on CPU for models under 50M parameters)",
    )
    simulate = serve.add_argument_group(
        "strict shard (no model)",
        "--simulate PROFILE serves a shard with TGI v3.3.7's semantics and no model (tokens from a "
        "deterministic stream, step times from PROFILE): SIMULATED, to test routers against TGI's contract",
    )
    simulate.add_argument("--simulate", metavar="PROFILE", default=None, help="a profile name or JSON path")
    simulate.add_argument("--kind", choices=("flash", "padded"), default=None, help="default: the profile's")
    simulate.add_argument("--block-size", type=int, default=None, help="flash: default the profile's")
    simulate.add_argument("--eos-rate", type=float, default=0.0, help="chance that a generated token is EOS")
    simulate.add_argument("--seed", type=int, default=0, help="seed of EOS and speculation draws")
    simulate.add_argument("--time-scale", type=float, default=1.0, help="multiplies step durations (0: none)")
    simulate.add_argument(
        "--reorder-seed", type=int, default=None, help="start waiting calls in a seeded random order"
    )
    simulate.add_argument(
        "--start-delay-ms", type=float, default=0.0, help="a call that finds the shard idle starts this late"
    )
    simulate.add_argument(
        "--fault", action="append", default=[], metavar="N:KIND", help="step call N: fail|crash|hang|die"
    )
    simulate.add_argument("--fault-rate", type=float, default=0.0, help="chance each step call fails")
    simulate.add_argument(
        "--refuse-prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="test only: a Prefill with a prompt holding TEXT fails (INTERNAL), as TGI's on a bad request",
    )
    simulate.add_argument(
        "--request-logprobs", action="store_true", help="flash: TGI's REQUEST_LOGPROBS=1 (prompt logprobs)"
    )
    serve.set_defaults(func=run)


def check_supported(args: argparse.Namespace, environ: dict[str, str]) -> tuple[int, int]:
    """ConfigError for what the bundled shard cannot do; returns (rank, world_size) from RANK / WORLD_SIZE."""
    try:
        rank, world_size = int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None
    if world_size > 1:
        raise ConfigError(
            f"WORLD_SIZE={world_size}: the bundled shard has no tensor parallelism; run one shard "
            "(--num-shard 1) or use TGI's shard"
        )
    if args.quantize is not None:
        raise ConfigError(
            f"quantization {args.quantize} is not supported by the bundled shard; use TGI's shard"
        )
    if args.speculate:
        raise ConfigError(f"--speculate {args.speculate}: speculation is not supported by the bundled shard")
    if args.lora_adapters or environ.get("LORA_ADAPTERS"):
        raise ConfigError("LoRA adapters are not supported by the bundled shard; use TGI's shard")
    if not 0 < args.kv_cache_memory_fraction <= 1:
        raise ConfigError(
            f"--kv-cache-memory-fraction must be in (0, 1], got {args.kv_cache_memory_fraction}"
        )
    if args.num_threads is not None and args.num_threads < 1:
        raise ConfigError(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.kv_cache_max_gib <= 0:
        raise ConfigError(f"--kv-cache-max-gib must be > 0, got {args.kv_cache_max_gib}")
    return rank, world_size


def prefix_caching(flag: bool | None, environ: dict[str, str] | os._Environ) -> bool:
    """The flag, else TGI's PREFIX_CACHING (set by launchers; "1"/"true" is on), else on."""
    if flag is not None:
        return flag
    value = environ.get("PREFIX_CACHING")
    return True if value is None else value.lower() in ("1", "true")


def load_engine(args: argparse.Namespace):
    """Load the model; what cannot be loaded (or served) becomes a ConfigError with the reason."""
    from tgi_async.shard.engine import Engine, EngineConfig, UnsupportedModelError

    config = EngineConfig(
        model_id=args.model_id,
        revision=args.revision,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        trust_remote_code=args.trust_remote_code,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction,
        kv_cache_max_bytes=int(args.kv_cache_max_gib * (1 << 30)),
        device=args.device,
        num_threads=args.num_threads,
        prefix_caching=prefix_caching(args.prefix_caching, os.environ),
        overlap=args.overlap,
        cuda_graphs=args.cuda_graphs,
    )
    try:
        return Engine(config)
    except UnsupportedModelError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ValueError) as exc:
        if os.path.isdir(args.model_id):
            raise ConfigError(f"cannot load {args.model_id}: {exc}") from None
        raise ConfigError(f"MODEL_ID is not a local directory and the hub is unreachable: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from tgi_async import event_loop
    from tgi_async.logs import setup_logging
    from tgi_async.memory import freeze_startup_objects

    setup_logging(json_output=args.json_output, level=args.logger_level, style="shard")
    if args.simulate is not None:
        return run_simulated(args)
    try:
        rank, world_size = check_supported(args, dict(os.environ))
        engine = load_engine(args)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    from tgi_async.shard.server import serve
    from tgi_async.telemetry import grpc_tracing, setup_from_args

    # NOTE: the single tracing hook: a server span per RPC, child of the router's traceparent metadata.
    setup_from_args(args, "text-generation-inference.server")
    interceptors = list(grpc_tracing.server_interceptors())
    freeze_startup_objects()
    event_loop.run(serve(engine, args.uds_path, rank, world_size, interceptors))
    return 0


def run_simulated(args: argparse.Namespace) -> int:
    from tgi_async import event_loop
    from tgi_async.strict_shard.cli import build, serve_simulated

    try:
        shard, executor = build(args)
    except (OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return event_loop.run(serve_simulated(shard, executor, args.uds_path)) or 0


if __name__ == "__main__":
    from tgi_async.cli import main

    sys.exit(main(["shard", *sys.argv[1:]]))
