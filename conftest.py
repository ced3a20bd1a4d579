"""Fixtures for tests/ and integration_tests/: the tiny model, built once per machine under the cache dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import CACHE_DIR
from tgi_async.launcher.processes import TMP_ROOT_ENV
from tgi_async.tiny_model import cached_tiny_model


@pytest.fixture(scope="session", autouse=True)
def session_tmp_root() -> Iterator[str]:
    """Every short socket directory of this session (and of the processes it starts) under one folder,
    removed at the end: a test run leaves no /tmp/tgia-* behind."""
    root = tempfile.mkdtemp(prefix="tgia-run-", dir="/tmp")
    previous = os.environ.get(TMP_ROOT_ENV)
    os.environ[TMP_ROOT_ENV] = root
    yield root
    if previous is None:
        os.environ.pop(TMP_ROOT_ENV, None)
    else:
        os.environ[TMP_ROOT_ENV] = previous
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return cached_tiny_model(CACHE_DIR)
