"""Router settings the HTTP API reads; defaults are those of TGI's `text-generation-router` (v3.3.x)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# What TGI's router answers in /info: its crate name and version.
ROUTER_NAME = "text-generation-router"
ROUTER_VERSION = "3.3.6-dev0"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the API layer needs to validate requests and describe itself in /info.

    `max_input_tokens` / `max_total_tokens` are resolved by the router CLI (TGI derives them from the model
    when not given). Batch sizing fields are not used by the API; they are kept here so the router CLI has
    one object to pass around and so /info-style introspection can report them.
    """

    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    tokenizer_name: str = ""  # defaults to model_id
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_client_batch_size: int = 4
    validation_workers: int = 2
    api_key: str | None = None
    cors_allow_origin: tuple[str, ...] = ()  # empty: any origin (TGI's default)
    payload_limit: int = 2_000_000  # bytes; larger request bodies get 413
    disable_grammar_support: bool = False
    model_sha: str | None = None
    model_pipeline_tag: str | None = None
    # batching knobs of TGI's router CLI (reported, not used by the API)
    waiting_served_ratio: float = 1.2
    max_batch_prefill_tokens: int = 4096
    max_batch_total_tokens: int | None = None
    max_waiting_tokens: int = 20
    max_batch_size: int | None = None
    # identity reported in /info
    router: str = ROUTER_NAME
    version: str = ROUTER_VERSION
    sha: str | None = field(default_factory=lambda: _env("VERGEN_GIT_SHA"))
    docker_label: str | None = field(default_factory=lambda: _env("DOCKER_LABEL"))
    # `x-compute-type` response header; TGI reads the COMPUTE_TYPE environment variable
    compute_type: str = field(default_factory=lambda: os.environ.get("COMPUTE_TYPE", "gpu+optimized"))

    @property
    def compat_return_full_text(self) -> bool:
        """`return_full_text` default on POST /: TGI's rule from the hub pipeline tag."""
        return self.model_pipeline_tag is None or self.model_pipeline_tag == "text-generation"
