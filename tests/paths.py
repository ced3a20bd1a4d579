"""Where the tests keep what they build once per machine (the tiny model, TGI's shard): the cache dir."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR = Path(os.environ.get("TGI_ASYNC_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
