"""Process memory settings shared by the router and the bundled shard."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up (torch, transformers, the model) out of the garbage collector.

    NOTE: with transformers loaded a full collection walks millions of objects (150-280 ms here), stalling
    every stream mid-generation; after the freeze a collection only sees what serving allocates (~5 ms).
    """
    gc.collect()
    gc.freeze()
