"""What `tgi-async launch` will run, as plain data: resolved limits, then each child's argv and env.

Pure functions of the LaunchConfig and the `Facts` probed at the edge (launch.py). The argv and env follow TGI
v3.3.x's launcher (`shard_manager`, `download_convert_model`, `spawn_webserver`) so TGI's own shard gets what
it expects, and the router gets the flags text-generation-router would, plus `--scheduler`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tgi_async.launcher.config import LaunchConfig, LaunchError, lora_downloads, validate
from tgi_async.launcher.processes import tgi_async_command
from tgi_async.launcher.sizing import (
    GpuInfo,
    ModelConfig,
    compute_type,
    default_max_batch_prefill_tokens,
    resolve_attention,
    resolve_num_shard,
    visible_devices,
)

DEFAULT_CUDA_GRAPHS = (1, 2, 4, 8, 16, 32)
# flags that reach TGI's shard as env vars the bundled shard does not read: named in a log line when set
_BUNDLED_IGNORES = ("cuda_graphs", "disable_custom_kernels", "rope_scaling", "rope_factor")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the launcher found about this machine (probed in launch.py)."""

    environ: dict[str, str]  # the launcher's environment
    model: ModelConfig | None = None  # the model's config.json, if readable
    gpu: GpuInfo | None = None  # first GPU per nvidia-smi
    gpu_count: int | None = None  # GPUs nvidia-smi lists
    tgi_shard: tuple[str, ...] | None = None  # command running TGI's text-generation-server, if found


@dataclass(frozen=True, slots=True)
class Resolved:
    """Values derived from flags + facts before anything starts, by TGI's rules."""

    shard_kind: str  # "bundled" | "tgi"
    num_shard: int
    max_input_tokens: int | None  # given, or left to the shard's warmup
    max_total_tokens: int | None
    max_batch_prefill_tokens: int
    quantize: str | None  # flag, else the model's quantization_config
    cuda_graphs: tuple[int, ...]
    prefix_caching: str  # PREFIX_CACHING for the shards
    attention: str  # ATTENTION for the shards
    compute_type: str | None  # COMPUTE_TYPE for the router (x-compute-type)
    shard_log_level: str  # TGI shard's --logger-level


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # "shard-0", "router", "download"
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # the complete environment of the child


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    resolved: Resolved
    downloads: tuple[Command, ...]  # run to completion first (TGI's shard only)
    shards: tuple[Command, ...]  # rank order
    sockets: tuple[str, ...]  # socket of each shard, rank order: ready when it exists
    router: Command
    notes: tuple[str, ...]  # flags accepted but not applicable, for the log


def fmt_float(value: float) -> str:
    """Floats as Rust prints them (`1` for 1.0, `0.3` for 0.3): argv identical to TGI's launcher."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _float_or(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def shard_log_level(environ: dict[str, str]) -> str:
    """The most verbose level named in LOG_LEVEL (a tracing filter such as `info` or `x=debug`), else INFO."""
    order = {"trace": "TRACE", "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR"}
    named = [part.split("=")[-1].strip().lower() for part in environ.get("LOG_LEVEL", "").split(",")]
    for level in order:
        if level in named:
            return order[level]
    return "INFO"


def resolve(config: LaunchConfig, facts: Facts) -> Resolved:
    """TGI's launcher validation and defaults; raises LaunchError with TGI's message where it would fail."""
    if config.shard == "tgi" and facts.tgi_shard is None:
        raise LaunchError(
            "--shard tgi: text-generation-server is not importable and TGI_SHARD_BIN is not set"
        )
    kind = "tgi" if config.shard == "tgi" or (config.shard == "auto" and facts.tgi_shard) else "bundled"

    devices = visible_devices(facts.environ, facts.gpu_count)
    if kind == "bundled" and config.sharded is None and config.num_shard is None:
        devices = 1  # NOTE: the bundled shard is not tensor-parallel: one shard unless asked for more
    num_shard = resolve_num_shard(config.sharded, config.num_shard, devices)
    if num_shard > 1 and config.quantize == "exl2":
        raise LaunchError("Sharding is currently not supported with `exl2` quantization")

    max_input, max_total = validate(config)

    prefill = config.max_batch_prefill_tokens
    if prefill is None:
        wiggle = _float_or(facts.environ.get("TGI_WIGGLE_ROOM"), 0.95)
        prefill = default_max_batch_prefill_tokens(
            facts.model, facts.gpu, num_shard, config.cuda_memory_fraction, wiggle
        )

    quantize = config.quantize or (facts.model.quantize if facts.model else None)
    if config.cuda_graphs is not None:
        cuda_graphs = tuple(c for c in config.cuda_graphs if c > 0)
    elif quantize in ("bitsandbytes", "exl2"):
        cuda_graphs = ()
    else:
        cuda_graphs = DEFAULT_CUDA_GRAPHS

    prefix_caching, attention = resolve_attention(
        facts.model,
        config.lora_adapters,
        facts.gpu.compute_capability if facts.gpu else None,
        facts.environ.get("ATTENTION"),
        facts.environ.get("PREFIX_CACHING"),
    )
    if kind == "bundled":
        # NOTE: TGI's rules tie prefix caching to its CUDA kernels; the bundled shard has it on any device
        prefix_caching = facts.environ.get("PREFIX_CACHING") or "true"
    return Resolved(
        shard_kind=kind,
        num_shard=num_shard,
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_batch_prefill_tokens=prefill,
        quantize=quantize,
        cuda_graphs=cuda_graphs,
        prefix_caching=prefix_caching,
        attention=attention,
        compute_type=facts.environ.get("COMPUTE_TYPE") or compute_type(facts.gpu, num_shard),
        shard_log_level=shard_log_level(facts.environ),
    )


def common_env(facts: Facts, resolved: Resolved) -> dict[str, str]:
    """The env every child inherits: TGI's launcher sets ATTENTION and PREFIX_CACHING on itself."""
    return {**facts.environ, "ATTENTION": resolved.attention, "PREFIX_CACHING": resolved.prefix_caching}


def _hub_env(config: LaunchConfig, facts: Facts, resolved: Resolved, hf_transfer: bool) -> dict[str, str]:
    env = common_env(facts, resolved)
    env.pop("LOG_LEVEL", None)
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if hf_transfer:
        env["HF_HUB_ENABLE_HF_TRANSFER"] = facts.environ.get("HF_HUB_ENABLE_HF_TRANSFER", "1")
    if "HF_API_TOKEN" in facts.environ:
        env["HF_TOKEN"] = facts.environ["HF_API_TOKEN"]
    if config.huggingface_hub_cache is not None:
        env["HUGGINGFACE_HUB_CACHE"] = config.huggingface_hub_cache
    if config.weights_cache_override is not None:
        env["WEIGHTS_CACHE_OVERRIDE"] = config.weights_cache_override
    return env


def shard_env(config: LaunchConfig, facts: Facts, resolved: Resolved, rank: int) -> dict[str, str]:
    """A shard's environment, as TGI's `shard_manager` builds it."""
    # NOTE: hf_transfer only for TGI's shard: its image ships hf_transfer, our venv may not.
    env = _hub_env(config, facts, resolved, hf_transfer=resolved.shard_kind == "tgi")
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(resolved.num_shard),
        MASTER_ADDR=config.master_addr,
        MASTER_PORT=str(config.master_port),
        TORCH_NCCL_AVOID_RECORD_STREAMS="1",
        CUDA_MEMORY_FRACTION=fmt_float(config.cuda_memory_fraction),
        SAFETENSORS_FAST_GPU="1",
    )
    if config.rope_scaling is not None or config.rope_factor is not None:
        env["ROPE_SCALING"] = config.rope_scaling or "linear"
        env["ROPE_FACTOR"] = fmt_float(config.rope_factor if config.rope_factor is not None else 1.0)
    if resolved.max_total_tokens is not None:
        env["MAX_TOTAL_TOKENS"] = str(resolved.max_total_tokens)
    if config.max_batch_size is not None:
        env["MAX_BATCH_SIZE"] = str(config.max_batch_size)
    if config.lora_adapters is not None:
        env["LORA_ADAPTERS"] = config.lora_adapters
    if config.enable_prefill_logprobs:
        env["REQUEST_LOGPROBS"] = "1"
    if resolved.cuda_graphs:
        env["CUDA_GRAPHS"] = ",".join(str(c) for c in resolved.cuda_graphs)
    if config.disable_custom_kernels:
        env["DISABLE_CUSTOM_KERNELS"] = "True"
    if config.watermark_gamma is not None:
        env["WATERMARK_GAMMA"] = fmt_float(config.watermark_gamma)
    if config.watermark_delta is not None:
        env["WATERMARK_DELTA"] = fmt_float(config.watermark_delta)
    if resolved.shard_kind == "bundled":
        env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tgi_shard_args(config: LaunchConfig, resolved: Resolved) -> list[str]:
    """Arguments of `text-generation-server` for every rank (the shard appends `-{RANK}` to the socket)."""
    args = ["serve", config.model_id, "--uds-path", config.shard_uds_path]
    args += ["--logger-level", resolved.shard_log_level, "--json-output"]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    if resolved.num_shard > 1:
        args.append("--sharded")
    for name, value in (
        ("--quantize", resolved.quantize),
        ("--speculate", config.speculate),
        ("--dtype", config.dtype),
        ("--kv-cache-dtype", config.kv_cache_dtype),
        ("--revision", config.revision),
        ("--otlp-endpoint", config.otlp_endpoint),
    ):
        if value is not None:
            args += [name, str(value)]
    args += ["--otlp-service-name", config.otlp_service_name]
    if resolved.max_input_tokens is not None:
        args += ["--max-input-tokens", str(resolved.max_input_tokens)]
    return args


def bundled_shard_args(config: LaunchConfig, resolved: Resolved) -> list[str]:
    """Arguments of `tgi-async shard` for every rank: TGI's shard flags (the bundled shard takes the same and
    refuses, with a clear message, what it cannot do); logs as JSON lines, which the launcher logs again."""
    args = tgi_shard_args(config, resolved)
    level = args.index("--logger-level") + 1
    args[level] = "DEBUG" if args[level] == "TRACE" else args[level]
    if config.otlp_file is not None:  # ours: TGI's shard does not know the flag
        args += ["--otlp-file", config.otlp_file]
    return ["shard", *args]


def download_args(
    model_id: str, revision: str | None, trust_remote_code: bool, merge_lora: bool
) -> list[str]:
    args = [
        "download-weights",
        model_id,
        "--extension",
        ".safetensors",
        "--logger-level",
        "INFO",
        "--json-output",
    ]
    if merge_lora:
        args.append("--merge-lora")
    if revision is not None:
        args += ["--revision", revision]
    if trust_remote_code:
        args.append("--trust-remote-code")
    return args


def router_args(config: LaunchConfig, resolved: Resolved) -> list[str]:
    """`tgi-async router` flags: what TGI's `spawn_webserver` passes text-generation-router, then ours."""
    args = [
        "--max-client-batch-size", str(config.max_client_batch_size),
        "--max-concurrent-requests", str(config.max_concurrent_requests),
        "--max-best-of", str(config.max_best_of),
        "--max-stop-sequences", str(config.max_stop_sequences),
        "--max-top-n-tokens", str(config.max_top_n_tokens),
        "--max-batch-prefill-tokens", str(resolved.max_batch_prefill_tokens),
        "--waiting-served-ratio", fmt_float(config.waiting_served_ratio),
        "--max-waiting-tokens", str(config.max_waiting_tokens),
        "--validation-workers", str(config.validation_workers),
        "--hostname", config.hostname,
        "--port", str(config.port),
        "--prometheus-port", str(config.prometheus_port),
        "--master-shard-uds-path", f"{config.shard_uds_path}-0",
        "--tokenizer-name", config.model_id,
        "--payload-limit", str(config.payload_limit),
    ]  # fmt: skip
    if resolved.max_input_tokens is not None:
        args += ["--max-input-tokens", str(resolved.max_input_tokens)]
    if resolved.max_total_tokens is not None:
        args += ["--max-total-tokens", str(resolved.max_total_tokens)]
    args += ["--usage-stats", config.usage_stats]
    if config.disable_grammar_support:
        args.append("--disable-grammar-support")
    for name, value in (
        ("--tokenizer-config-path", config.tokenizer_config_path),
        ("--max-batch-total-tokens", config.max_batch_total_tokens),
        ("--max-batch-size", config.max_batch_size),
        ("--revision", config.revision),
    ):
        if value is not None:
            args += [name, str(value)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    if config.json_output:
        args.append("--json-output")
    if config.otlp_endpoint is not None:
        args += ["--otlp-endpoint", config.otlp_endpoint]
    args += ["--otlp-service-name", config.otlp_service_name]
    if config.otlp_file is not None:
        args += ["--otlp-file", config.otlp_file]
    for origin in config.cors_allow_origin:
        args += ["--cors-allow-origin", origin]
    if config.api_key is not None:
        args += ["--api-key", config.api_key]
    if config.ngrok:
        args += [
            "--ngrok",
            "--ngrok-authtoken",
            str(config.ngrok_authtoken),
            "--ngrok-edge",
            str(config.ngrok_edge),
        ]
    return [
        *args,
        "--scheduler",
        config.scheduler,
        "--prefill-step-tokens",
        str(config.prefill_step_tokens),
        "--shard-call-timeout",
        str(config.shard_call_timeout),
        "--health-stall-timeout",
        str(config.health_stall_timeout),
        "--http-header-timeout",
        str(config.http_header_timeout),
        "--http-body-timeout",
        str(config.http_body_timeout),
        "--http-max-silent-connections",
        str(config.http_max_silent_connections),
    ]


def router_env(facts: Facts, resolved: Resolved, lora_adapters: str | None = None) -> dict[str, str]:
    env = common_env(facts, resolved)
    if lora_adapters is not None:  # the shard loads them; the router's LoRA gauge counts them
        env["LORA_ADAPTERS"] = lora_adapters
    if "HF_API_TOKEN" in facts.environ:
        env["HF_TOKEN"] = facts.environ["HF_API_TOKEN"]
    if resolved.compute_type is not None:
        env["COMPUTE_TYPE"] = resolved.compute_type
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def notes(config: LaunchConfig, resolved: Resolved) -> tuple[str, ...]:
    """Log lines for flags that are accepted but change nothing in this launch."""
    lines: list[str] = []
    if resolved.shard_kind == "bundled":
        for name in _BUNDLED_IGNORES:
            value = getattr(config, name)
            if value not in (None, False):
                lines.append(f"--{name.replace('_', '-')}: accepted, not applicable to the bundled shard")
    return tuple(lines)


def plan(config: LaunchConfig, facts: Facts) -> LaunchPlan:
    """Everything `tgi-async launch` will start, in order."""
    resolved = resolve(config, facts)
    downloads: list[Command] = []
    if resolved.shard_kind == "tgi":
        assert facts.tgi_shard is not None
        env = _hub_env(config, facts, resolved, hf_transfer=True)
        base = download_args(config.model_id, config.revision, config.trust_remote_code, merge_lora=True)
        downloads.append(Command("download", (*facts.tgi_shard, *base), env))
        for adapter in lora_downloads(config.lora_adapters):
            adapter_id, _, revision = adapter.partition("@")
            argv = download_args(adapter_id, revision or None, config.trust_remote_code, merge_lora=False)
            downloads.append(Command(f"download {adapter_id}", (*facts.tgi_shard, *argv), env))
        shard_argv = (*facts.tgi_shard, *tgi_shard_args(config, resolved))
    else:
        shard_argv = tuple(tgi_async_command(*bundled_shard_args(config, resolved)))
    shards = tuple(
        Command(f"shard-{rank}", shard_argv, shard_env(config, facts, resolved, rank))
        for rank in range(resolved.num_shard)
    )
    return LaunchPlan(
        resolved=resolved,
        downloads=tuple(downloads),
        shards=shards,
        sockets=tuple(f"{config.shard_uds_path}-{rank}" for rank in range(resolved.num_shard)),
        router=Command(
            "router",
            tuple(tgi_async_command("router", *router_args(config, resolved))),
            router_env(facts, resolved, config.lora_adapters),
        ),
        notes=notes(config, resolved),
    )
