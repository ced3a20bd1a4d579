"""`tgi-async launch` configuration: TGI v3.3.x text-generation-launcher's flags, plus ours.

One field per flag, named as TGI names it (`--max-batch-prefill-tokens` <-> `max_batch_prefill_tokens`); each
flag also reads the env var of its name in capitals (`MAX_BATCH_PREFILL_TOKENS`), as clap's `env` does. The
field metadata is what cli.py turns into argparse arguments: flags, env vars and defaults are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


class LaunchError(Exception):
    """The launch cannot proceed; the message says why (printed without a stack trace)."""


QUANTIZE = (
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
)
DTYPES = ("float16", "bfloat16")
KV_CACHE_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")
ROPE_SCALINGS = ("linear", "dynamic")
USAGE_STATS = ("on", "off", "no-stack")
SCHEDULERS = ("async", "sync")
SHARD_KINDS = ("bundled", "tgi", "auto")


def flag(
    default: Any,
    kind: str,
    help: str,
    choices: tuple[str, ...] | None = None,
    env: str | None = "",
    short: str | None = None,
) -> Any:
    """A dataclass field that is also a CLI flag.

    kind: "str" | "int" | "float" | "switch" (present = true) | "bool" (takes true/false)
    | "ints" (comma list) | "append" (repeatable).
    env: "" = the field name in capitals, None = no env var, else that name.
    """
    metadata = {"kind": kind, "help": help, "choices": choices, "env": env, "short": short}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """Every flag of `tgi-async launch`, parsed (values as given; resolution happens in plan.py)."""

    model_id: str = flag("bigscience/bloom-560m", "str", "model on the Hub or a local directory")
    revision: str | None = flag(None, "str", "Hub revision (commit, branch, refs/pr/N)")
    validation_workers: int = flag(2, "int", "tokenizer workers in the router")
    sharded: bool | None = flag(None, "bool", "shard the model across GPUs (true/false)")
    num_shard: int | None = flag(None, "int", "number of shards (default: visible GPUs, else 1)")
    quantize: str | None = flag(None, "str", "quantization method (TGI's shard)", QUANTIZE)
    speculate: int | None = flag(None, "int", "speculative tokens per step (TGI's shard)")
    dtype: str | None = flag(None, "str", "force the model dtype", DTYPES)
    kv_cache_dtype: str | None = flag(None, "str", "KV cache dtype (TGI's shard, CUDA)", KV_CACHE_DTYPES)
    trust_remote_code: bool = flag(False, "switch", "run the model repository's own code")
    max_concurrent_requests: int = flag(128, "int", "requests in flight before 429")
    max_best_of: int = flag(2, "int", "largest `best_of` a client may ask")
    max_stop_sequences: int = flag(4, "int", "most `stop` sequences per request")
    max_top_n_tokens: int = flag(5, "int", "largest `top_n_tokens` a client may ask")
    max_input_tokens: int | None = flag(None, "int", "longest prompt in tokens")
    max_input_length: int | None = flag(None, "int", "legacy name of --max-input-tokens")
    max_total_tokens: int | None = flag(None, "int", "prompt + generated tokens per request")
    waiting_served_ratio: float = flag(0.3, "float", "waiting/running ratio that triggers a prefill")
    max_batch_prefill_tokens: int | None = flag(None, "int", "prompt tokens per prefill batch")
    max_batch_total_tokens: int | None = flag(None, "int", "KV tokens of a whole batch")
    max_waiting_tokens: int = flag(20, "int", "decode steps before waiting requests force a prefill")
    max_batch_size: int | None = flag(None, "int", "most requests per batch")
    cuda_graphs: tuple[int, ...] | None = flag(None, "ints", "CUDA graph batch sizes (a,b,...); 0 disables")
    hostname: str = flag("0.0.0.0", "str", "address the router listens on")
    port: int = flag(3000, "int", "port the router listens on", short="-p")
    prometheus_port: int = flag(
        9000, "int", "port of a second server with /metrics only (also served on --port); 0: none"
    )
    shard_uds_path: str = flag("/tmp/text-generation-server", "str", "shard sockets are PATH-{rank}")
    master_addr: str = flag("localhost", "str", "torch.distributed master address")
    master_port: int = flag(29500, "int", "torch.distributed master port")
    huggingface_hub_cache: str | None = flag(None, "str", "Hub cache directory")
    weights_cache_override: str | None = flag(None, "str", "weights cache directory")
    disable_custom_kernels: bool = flag(False, "switch", "disable TGI's custom CUDA kernels")
    cuda_memory_fraction: float = flag(1.0, "float", "fraction of GPU memory the shard may use")
    rope_scaling: str | None = flag(None, "str", "RoPE scaling kind", ROPE_SCALINGS)
    rope_factor: float | None = flag(None, "float", "RoPE scaling factor")
    json_output: bool = flag(False, "switch", "JSON lines logs")
    otlp_endpoint: str | None = flag(None, "str", "OpenTelemetry collector (gRPC)")
    otlp_service_name: str = flag("text-generation-inference.router", "str", "OpenTelemetry service name")
    otlp_file: str | None = flag(
        None, "str", "also write spans as OTLP JSON lines to this file (router and bundled shard)"
    )
    cors_allow_origin: tuple[str, ...] = flag((), "append", "allowed CORS origin (repeatable)")
    api_key: str | None = flag(None, "str", "bearer token required on generation routes")
    watermark_gamma: float | None = flag(None, "float", "watermark gamma (shard env)")
    watermark_delta: float | None = flag(None, "float", "watermark delta (shard env)")
    ngrok: bool = flag(False, "switch", "ngrok tunnel (accepted, not applicable)")
    ngrok_authtoken: str | None = flag(None, "str", "ngrok token (accepted, not applicable)")
    ngrok_edge: str | None = flag(None, "str", "ngrok edge (accepted, not applicable)")
    tokenizer_config_path: str | None = flag(None, "str", "tokenizer_config.json to use (chat template)")
    disable_grammar_support: bool = flag(False, "switch", "reject grammar-constrained requests")
    env: bool = flag(False, "switch", "log the runtime environment", env=None, short="-e")
    max_client_batch_size: int = flag(4, "int", "most inputs per request")
    lora_adapters: str | None = flag(None, "str", "LoRA adapters to load (TGI's shard)")
    usage_stats: str = flag("on", "str", "usage statistics (none are collected here)", USAGE_STATS)
    payload_limit: int = flag(2_000_000, "int", "largest request body in bytes")
    enable_prefill_logprobs: bool = flag(False, "switch", "allow prompt logprobs (shard REQUEST_LOGPROBS)")
    graceful_termination_timeout: int = flag(90, "int", "seconds to stop before SIGKILL", short="-g")
    # ours
    scheduler: str = flag(
        "async",
        "str",
        "async: decoupled prefill/decode loops; sync: TGI's batching loop",
        SCHEDULERS,
        env="TGI_ASYNC_SCHEDULER",
    )
    prefill_step_tokens: int = flag(
        DEFAULT_PREFILL_STEP_TOKENS,
        "int",
        "async scheduler: prompt tokens a new prompt's first step computes while others decode",
    )
    shard_call_timeout: float = flag(
        DEFAULT_SHARD_CALL_TIMEOUT_S, "float", "seconds a shard step may take before it fails (0: none)"
    )
    health_stall_timeout: float = flag(
        DEFAULT_HEALTH_STALL_S, "float", "/health answers 503 while a shard call has run this long"
    )
    http_header_timeout: float = flag(
        DEFAULT_HEADER_TIMEOUT_S, "float", "seconds a client may take to send a request's headers (0: none)"
    )
    http_body_timeout: float = flag(
        DEFAULT_BODY_TIMEOUT_S, "float", "seconds a client may take to send a request's body (0: none)"
    )
    http_max_silent_connections: int = flag(
        DEFAULT_MAX_SILENT_CONNECTIONS, "int", "connections open with no byte sent; past it the oldest closes"
    )
    shard: str = flag(
        "auto",
        "str",
        "bundled: tgi-async's transformers shard; tgi: TGI's text-generation-server; "
        "auto: tgi when importable or TGI_SHARD_BIN is set, else bundled",
        SHARD_KINDS,
        env="TGI_ASYNC_SHARD",
    )


def env_name(name: str, metadata: Any) -> str | None:
    """The env var a flag reads, or None."""
    env = metadata["env"]
    return name.upper() if env == "" else env


def redacted(config: LaunchConfig) -> dict[str, Any]:
    """The config as a dict for logging, secrets hidden."""
    values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    for secret in ("api_key", "ngrok_authtoken"):
        if values[secret] is not None:
            values[secret] = "***"
    return values


def validate(config: LaunchConfig) -> tuple[int | None, int | None]:
    """Checks that need only the flags (TGI's messages); returns (max_input_tokens, max_total_tokens)."""
    if config.max_input_tokens is not None and config.max_input_length is not None:
        raise LaunchError(
            f"Both `max_input_tokens` ({config.max_input_tokens}) and `max_input_length` "
            f"({config.max_input_length}) are set. Please define only `max_input_tokens` as "
            "`max_input_length is deprecated for naming consistency."
        )
    max_input = config.max_input_tokens if config.max_input_tokens is not None else config.max_input_length
    max_total = config.max_total_tokens
    if max_input is not None and max_total is not None and max_input >= max_total:
        raise LaunchError(f"`max_input_tokens`({max_input}) must be < `max_total_tokens`({max_total})")
    if config.validation_workers == 0:
        raise LaunchError("`validation_workers` must be > 0")
    batch_total = config.max_batch_total_tokens
    if batch_total is not None and max_total is not None and max_total > batch_total:
        raise LaunchError(
            f"`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {max_total} and {batch_total}"
        )
    if config.ngrok and config.ngrok_authtoken is None:
        raise LaunchError("`ngrok-authtoken` must be set when using ngrok tunneling")
    if config.ngrok and config.ngrok_edge is None:
        raise LaunchError("`ngrok-edge` must be set when using ngrok tunneling")
    for adapter in lora_downloads(config.lora_adapters):
        if adapter.count("@") > 1:
            raise LaunchError(f"Invalid LoRA adapter format: {adapter}")
    return max_input, max_total


def lora_downloads(lora_adapters: str | None) -> list[str]:
    """Adapters to download: every `id[@revision]` entry; `name=path` entries are local."""
    if not lora_adapters:
        return []
    return [a.strip() for a in lora_adapters.split(",") if "=" not in a]
