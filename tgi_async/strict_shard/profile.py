"""Cost and memory profiles of the strict shard: how long a forward takes, how much KV fits after Warmup.

A forward that computes `prefill` prompt tokens and `decode` decoding rows (each 1 + speculate tokens), whose
rows attend over `context` KV tokens in all, takes

    max(forward_floor_ms, (prefill_base_ms if prefill else decode_base_ms) + prefill_ms_per_token * prefill
        + decode_ms_per_row * decode * (1 + speculate) + context_ms_per_1k_tokens * context / 1000)

Profiles are JSON files in profiles/ (or a path), fitted to published measurements that each file cites.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

PROFILE_DIR = Path(__file__).parent / "profiles"
Kind = Literal["flash", "padded"]
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: Kind = "flash"  # flash: TGI's FlashCausalLM (blocks, slots, chunking); padded: its CPU CausalLM
    block_size: int = 1  # flash: 1 with flashinfer (TGI v3's default on CUDA), 16 with paged attention
    speculate: int = 0
    accept_rate: float = 0.7  # chance each speculated token is accepted (given the ones before it were)
    prefix_caching: bool = True  # Info.use_prefix_caching (flash only)
    # step costs (ms)
    prefill_base_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    decode_base_ms: float = 0.0
    decode_ms_per_row: float = 0.0
    context_ms_per_1k_tokens: float = 0.0
    forward_floor_ms: float = 0.0  # no forward is shorter (a GPU forward reads every weight once)
    # memory model of Warmup (per GPU of the shard)
    gpu_memory_gib: float = 80.0
    weights_gib: float = 16.0
    kv_bytes_per_token: int = 131072
    activation_bytes_per_token: int = 0  # peak activation memory of a prefill forward, per token
    memory_fraction: float = 1.0  # CUDA_MEMORY_FRACTION
    wiggle_room: float = 0.9  # TGI_WIGGLE_ROOM
    max_position_embeddings: int = 131072
    dtype: str = "torch.bfloat16"
    device_type: str = "cuda"
    sources: tuple[str, ...] = field(default=())  # where the numbers come from

    @property
    def attention(self) -> str:
        """TGI's ATTENTION for this block size (globals.py: flashinfer 1, flashdecoding 256, paged 16)."""
        return {1: "flashinfer", 256: "flashdecoding"}.get(self.block_size, "paged")

    @property
    def supports_chunking(self) -> bool:
        """TGI chunks only with flashinfer / flashdecoding, and never with speculation or padded models."""
        return self.kind == "flash" and self.speculate == 0 and self.attention != "paged"

    @property
    def uses_prefix_caching(self) -> bool:
        """TGI refuses prefix caching with paged attention."""
        return self.kind == "flash" and self.prefix_caching and self.attention != "paged"

    def forward_ms(self, prefill: int, decode: int, context: int) -> float:
        base = self.prefill_base_ms if prefill else self.decode_base_ms
        return max(
            self.forward_floor_ms,
            base
            + self.prefill_ms_per_token * prefill
            + self.decode_ms_per_row * decode * (1 + self.speculate)
            + self.context_ms_per_1k_tokens * context / 1000,
        )

    def free_kv_bytes(self, warmup_tokens: int) -> float:
        """KV bytes TGI finds free after profiling a `warmup_tokens` prefill: free memory minus the share
        (1 - memory_fraction * wiggle_room) of the whole GPU it leaves alone."""
        used = (self.weights_gib * GIB) + self.activation_bytes_per_token * warmup_tokens
        free = self.gpu_memory_gib * GIB - used
        return free - (1 - self.memory_fraction * self.wiggle_room) * self.gpu_memory_gib * GIB


def load_profile(name_or_path: str, **overrides: object) -> Profile:
    """A profile by name (profiles/NAME.json) or path; `overrides` replace fields (None: keep)."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.json")))
        raise ValueError(f"no simulation profile {name_or_path!r} (known: {known})")
    raw = json.loads(path.read_text())
    names = {f.name for f in fields(Profile)}
    unknown = set(raw) - names - {"comment", "fit"}
    if unknown:
        raise ValueError(f"{path}: unknown profile fields {sorted(unknown)}")
    values = {k: v for k, v in raw.items() if k in names}
    values["sources"] = tuple(values.get("sources", ()))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Profile(**values)  # type: ignore[arg-type]


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))
