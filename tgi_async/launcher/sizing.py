"""What TGI's launcher derives from the model's config.json and the GPUs: pure functions over plain data.

Same rules as TGI v3.3.x's launcher: the default `--max-batch-prefill-tokens` (compute- and memory-bound
estimates on known GPUs, else 4096 capped by the model's positions), the attention kernel and prefix caching
its shard should use, the number of shards, and the COMPUTE_TYPE the router reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tgi_async.launcher.config import QUANTIZE, LaunchError


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The fields of a model's config.json that sizing needs (normalized across model families)."""

    max_position_embeddings: int | None = None
    quantize: str | None = None  # quantization_config.quant_method
    head_dim: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    num_layers: int | None = None
    intermediate_size: int | None = None
    hidden_size: int | None = None
    model_type: str | None = None
    text_config_head_dim: int | None = None
    has_text_config: bool = False
    has_vision_config: bool = False
    is_encoder_decoder: bool = False
    num_experts_per_token: int = 1
    num_shared_experts: int = 0
    num_experts: int = 1
    vocab_size: int | None = None


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What nvidia-smi says about the first visible GPU."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_mib: int | None  # memory.total of one GPU
    compute_capability: tuple[int, int] | None


def parse_model_config(raw: dict[str, Any]) -> ModelConfig | None:
    """config.json -> ModelConfig; None where TGI's launcher would fail to read it (unknown quant method)."""
    quant_method = (raw.get("quantization_config") or {}).get("quant_method")
    if quant_method is not None and quant_method not in QUANTIZE:
        return None
    hidden_size = raw.get("hidden_size") or raw.get("n_embd")
    heads = raw.get("num_attention_heads")
    head_dim = raw.get("head_dim")
    if head_dim is None and hidden_size and heads and hidden_size % heads == 0:
        head_dim = hidden_size // heads
    text_config = raw.get("text_config")
    positions = raw.get("max_position_embeddings") or raw.get("max_seq_len") or raw.get("n_positions")
    return ModelConfig(
        max_position_embeddings=positions,
        quantize=quant_method,
        head_dim=head_dim,
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        num_layers=raw.get("num_hidden_layers"),
        intermediate_size=raw.get("intermediate_size"),
        hidden_size=hidden_size,
        model_type=raw.get("model_type"),
        text_config_head_dim=(text_config or {}).get("head_dim"),
        has_text_config=text_config is not None,
        has_vision_config=raw.get("vision_config") is not None,
        is_encoder_decoder=bool(raw.get("is_encoder_decoder") or False),
        num_experts_per_token=raw.get("num_experts_per_tok") or 1,
        num_shared_experts=raw.get("n_shared_experts") or 0,
        num_experts=raw.get("num_local_experts") or 1,
        vocab_size=raw.get("vocab_size"),
    )


def effective_head_dim(config: ModelConfig) -> int | None:
    if config.head_dim is not None:
        return config.head_dim
    if not config.has_text_config:
        return None
    if config.text_config_head_dim is not None:
        return config.text_config_head_dim
    return 256 if config.model_type == "gemma3" else None


def model_flops(config: ModelConfig) -> int | None:
    """Forward FLOPs per token (attention projections + MLP), as TGI estimates them; None for VLMs."""
    head_dim = effective_head_dim(config)
    needed = (config.num_heads, config.num_kv_heads, head_dim, config.hidden_size, config.intermediate_size)
    if config.has_vision_config or None in needed or config.num_layers is None:
        return None
    heads, kv_heads, hidden = config.num_heads, config.num_kv_heads, config.hidden_size
    intermediate = config.intermediate_size * (config.num_experts_per_token + config.num_shared_experts)
    attention = 2 * head_dim * hidden * (3 * heads + 2 * kv_heads)  # q, scores, o + k, v
    return (attention + 2 * 3 * hidden * intermediate) * config.num_layers


def model_bytes(config: ModelConfig) -> int | None:
    head_dim = effective_head_dim(config)
    needed = (config.num_heads, config.num_kv_heads, head_dim, config.hidden_size, config.intermediate_size)
    if config.quantize is not None or None in needed or None in (config.vocab_size, config.num_layers):
        return None
    attention = (config.num_heads + 2 * config.num_kv_heads) * head_dim
    output = config.num_heads * head_dim * config.hidden_size
    mlp = 3 * config.intermediate_size * config.num_experts * config.hidden_size
    params = (mlp + attention + output) * config.num_layers + 2 * config.hidden_size * config.vocab_size
    return params * 2


def token_bytes(config: ModelConfig) -> int | None:
    """KV cache + MLP activations per token, in bytes (fp16)."""
    head_dim = effective_head_dim(config)
    if config.quantize is not None or None in (config.num_kv_heads, head_dim, config.num_layers):
        return None
    if config.intermediate_size is None:
        return None
    kv = config.num_kv_heads * 2 * head_dim * 2 * config.num_layers
    mlp = config.intermediate_size
    return kv + (mlp + mlp // 2) * config.num_experts * 2 * 3


# card name as nvidia-smi prints it, lower-cased with dashes -> (name TGI reports, dense fp16 FLOP/s)
_CARDS = {
    "nvidia-4090": ("nvidia-4090", 82 * 10**12),
    "nvidia-t4": ("nvidia-t4", 65 * 10**12),
    "nvidia-l4": ("nvidia-l4", 121 * 10**12),
    "nvidia-l40": ("nvidia-l40", 181 * 10**12),
    "nvidia-l40s": ("nvidia-l40s", 363 * 10**12),
    "nvidia-a10g": ("nvidia-a10g", 125 * 10**12),
    "nvidia-a40": ("nvidia-a40", 149 * 10**12),
    # NOTE: TGI reports every H100 as "nvidia-h100-80fb-hbm3" (sic); clients see it in x-compute-type.
    "nvidia-h100-80gb-hbm3": ("nvidia-h100-80fb-hbm3", 900 * 10**12),
    "nvidia-h100-nvl": ("nvidia-h100-80fb-hbm3", 900 * 10**12),
    "nvidia-h100": ("nvidia-h100-80fb-hbm3", 900 * 10**12),
    "nvidia-a100-sxm4-80gb": ("nvidia-a100-sxm4-80gb", 312 * 10**12),
    "nvidia-a100-sxm4-40gb": ("nvidia-a100-sxm4-80gb", 312 * 10**12),
    "nvidia-a100-80gb-pcie": ("nvidia-a100-sxm4-80gb", 312 * 10**12),
    "nvidia-a100": ("nvidia-a100-sxm4-80gb", 312 * 10**12),
    "nvidia-h200": ("nvidia-h200", 989 * 10**12),
}


def card_key(gpu_name: str) -> str:
    return gpu_name.replace(" ", "-").lower()


def compute_type(gpu: GpuInfo | None, count: int) -> str | None:
    """COMPUTE_TYPE for the router (`{count}-{card}`), as TGI's launcher sets it; None without a GPU."""
    if gpu is None:
        return None
    key = card_key(gpu.name)
    return f"{count}-{_CARDS.get(key, (key, None))[0]}"


def compute_optimal_prefill(config: ModelConfig | None, gpu: GpuInfo | None, count: int) -> int | None:
    """Prefill tokens that saturate the GPUs' fp16 compute; None when unknown or implausibly small."""
    if config is None or gpu is None:
        return None
    card = _CARDS.get(card_key(gpu.name))
    flops = model_flops(config)
    if card is None or not flops:
        return None
    optimal = card[1] * count // flops
    return optimal if optimal > 100 else None


def vram_max_tokens(
    config: ModelConfig | None, gpu: GpuInfo | None, count: int, memory_fraction: float, wiggle_room: float
) -> int | None:
    """Tokens that fit in GPU memory after the weights; None when unknown or the model does not fit."""
    if config is None or gpu is None or gpu.memory_mib is None:
        return None
    available = int(gpu.memory_mib * 2**20 * count * memory_fraction * wiggle_room)
    weights, per_token = model_bytes(config), token_bytes(config)
    if weights is None or not per_token or available < weights:
        return None
    return (available - weights) // per_token


def default_max_batch_prefill_tokens(
    config: ModelConfig | None,
    gpu: GpuInfo | None,
    count: int,
    memory_fraction: float,
    wiggle_room: float = 0.95,
) -> int:
    """TGI's default for --max-batch-prefill-tokens."""
    fallback = 4096
    if config is not None and config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        fallback = 10_000
    elif config is not None and config.model_type == "gemma3":
        fallback = 8000
    value = compute_optimal_prefill(config, gpu, count) or fallback
    if config is not None and config.max_position_embeddings:
        value = min(value, config.max_position_embeddings)
    vram = vram_max_tokens(config, gpu, count, memory_fraction, wiggle_room)
    return min(value, vram) if vram is not None else value


def resolve_attention(
    config: ModelConfig | None,
    lora_adapters: str | None,
    compute_capability: tuple[int, int] | None,
    attention: str | None,
    prefix_caching: str | None,
) -> tuple[str, str]:
    """(PREFIX_CACHING, ATTENTION) for TGI's shard; `attention`/`prefix_caching` are the env's values."""
    if config is not None:
        if prefix_caching is None and (config.has_vision_config or config.is_encoder_decoder):
            prefix_caching = "0"
        fallback = "paged" if compute_capability is None or compute_capability[0] < 8 else "flashdecoding"
        if effective_head_dim(config) in (64, 128, 256):
            if lora_adapters is not None and prefix_caching is None:
                prefix_caching = "0"
            if config.model_type in ("falcon", "deepseek_v2"):
                attention = attention or fallback
                if fallback == "paged" and prefix_caching is None:
                    prefix_caching = "0"
        else:
            attention = attention or fallback
            prefix_caching = prefix_caching or "0"
    if attention == "paged" and prefix_caching is None:
        prefix_caching = "0"
    return prefix_caching or "true", attention or "flashinfer"


def visible_devices(environ: dict[str, str], nvidia_smi_count: int | None) -> int | None:
    """GPUs visible to the shards: CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, ZE_AFFINITY_MASK."""
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    if devices is None:
        devices = environ.get("NVIDIA_VISIBLE_DEVICES")
        if devices is not None and devices.strip() in ("all", "void"):
            return None if nvidia_smi_count is None else max(nvidia_smi_count, 1)
        if devices is None:
            devices = environ.get("ZE_AFFINITY_MASK")
    return None if devices is None else len(devices.split(","))


def resolve_num_shard(sharded: bool | None, num_shard: int | None, devices: int | None) -> int:
    """TGI's rules for --sharded / --num-shard."""
    if sharded is True and num_shard is None:
        if devices is None:
            raise LaunchError(
                "--num-shard and CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES/ZE_AFFINITY_MASK are not set"
            )
        if devices <= 1:
            raise LaunchError(f"`sharded` is true but only found {devices} CUDA devices")
        count = devices
    elif sharded is True and num_shard is not None:
        if num_shard <= 1:
            raise LaunchError("`sharded` is true but `num_shard` <= 1")
        count = num_shard
    elif sharded is False:
        count = 1 if num_shard is None else num_shard
    else:
        count = num_shard if num_shard is not None else (devices or 1)
    if count < 1:
        raise LaunchError("`num_shard` cannot be < 1")
    return count
