"""Fixtures for the API tests: the tiny model's tokenizer, and the routers the lead's conftest starts.

End-to-end tests use `router_url` (one router + bundled shard for the session) and `router_factory(*args)`
(a router started with extra `tgi-async router` flags, e.g. "--max-concurrent-requests", "1"), both
defined in tests/conftest.py. A router that cannot start fails the tests that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tgi_url(router_url: str) -> str:
    """Base URL of the session's router (http://127.0.0.1:PORT); a router that cannot start fails the test."""
    return router_url


@pytest.fixture(scope="session")
def start_router(router_factory: Callable[..., str]) -> Callable[..., str]:
    """`start_router(*flags) -> url`: a router (and its shard) with extra flags, started once per flag set."""
    return router_factory
