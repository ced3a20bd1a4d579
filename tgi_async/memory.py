"""Process memory settings shared by the router and the bundled shard."""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up (torch, transformers, the model) out of the garbage collector.

    NOTE: with transformers loaded a full collection walks millions of objects (150-280 ms here), stalling
    every stream mid-generation; after the freeze a collection only sees what serving allocates (~5 ms).
    """
    gc.collect()
    gc.freeze()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Hand memory that the process freed back to the OS (glibc's `malloc_trim`); False where unavailable.

    NOTE: glibc keeps freed memory of large requests (1 MB strings, the tokenizer's buffers) in its heaps
    and arenas; without this the RSS stays at its peak after a few large inputs. ctypes releases the GIL
    for the call, so running it in a thread leaves the event loop free.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_ALLOCATION_BYTES = 1 << 20


def map_large_allocations(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Serve every allocation of `threshold` bytes or more with its own mmap, unmapped when freed.

    NOTE: by default glibc raises this threshold to the size of the largest block freed so far (up to
    32 MB), so after one large request the next ones' 1 MB strings and 32 MB answers come from the heap,
    and their memory stays in the process after they are freed (+80 MB after five 1 MB /tokenize). A
    fixed threshold keeps large blocks out of the heap; they are rare, and an mmap each is cheap for them.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        return False
