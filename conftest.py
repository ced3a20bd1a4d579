"""Fixtures for tests/ and integration_tests/: the tiny model, built once per machine under the cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tgi_async.tiny_model import cached_tiny_model

CACHE_DIR = Path(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).resolve().parent / ".cache"))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return cached_tiny_model(CACHE_DIR)
