"""Fixtures for tests/ and integration_tests/: the tiny model, built once per machine under the cache dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.paths import CACHE_DIR
from tgi_async.tiny_model import cached_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return cached_tiny_model(CACHE_DIR)
